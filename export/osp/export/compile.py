"""Regional torch.compile: compile each repeated transformer block, not the whole model.

A Latte-class model is dozens of copies of one or two block classes. Compiling the block modules
(instead of the model) means Dynamo traces one block, the other copies reuse that code (their
parameters are inputs of the compiled graph, not constants), so compile time stays that of one block
while the blocks, where nearly all the time goes, run fused. Embeddings, conditioning and the final
layer stay eager; they are a few small ops per step.

For inference there is a second way, :func:`compile_frozen`: the whole model under one graph with
Inductor's *freezing*, which folds the weights into the graph as constants. Constant weights let
Inductor pre-pack every linear layer's weight once for oneDNN on CPU (and fold constant
sub-expressions), which regional compilation cannot do because there the weights are graph inputs.
It costs a longer compile (the whole model is traced) and holds only for inference: the compiled
model must run with gradients off, and later changes to the weights are not seen by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from osp.errors import ConfigError

CompileMode = Literal["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"]
# Where each transformer keeps its repeated blocks (diffusers calls this ``_repeated_blocks``).
REPEATED_BLOCKS: dict[str, tuple[str, ...]] = {
    "LatteT2V": ("transformer_blocks", "temporal_transformer_blocks"),
    "Latte": ("blocks",),
    "DiT": ("blocks",),
}


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The block modules of ``model``: its declared block lists, else every ModuleList of one class."""
    names = getattr(model, "_repeated_blocks", None) or REPEATED_BLOCKS.get(type(model).__name__)
    lists: list[nn.ModuleList]
    if names:
        lists = [getattr(model, name) for name in names]
    else:
        lists = [
            child
            for child in model.children()
            if isinstance(child, nn.ModuleList) and len(child) > 1 and len({type(m) for m in child}) == 1
        ]
    blocks = [block for blocks in lists for block in blocks]
    if not blocks:
        raise ConfigError(f"compile: {type(model).__name__} has no repeated blocks to compile")
    return blocks


def compile_blocks(
    model: nn.Module, *, mode: CompileMode = "default", dynamic: bool | None = None, fullgraph: bool = True
) -> nn.Module:
    """Compile every repeated block of ``model`` in place and return the model.

    ``fullgraph=True`` makes a graph break inside a block an error instead of a silent slowdown.
    ``dynamic``: None lets Dynamo recompile once with symbolic sizes after a shape change; True starts
    symbolic (one compile for all resolutions); False specialises on every shape (fastest per shape).
    """
    for block in repeated_blocks(model):
        block.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph)
    return model


def compile_frozen(
    model: nn.Module, *, mode: CompileMode = "default", dynamic: bool | None = None, fullgraph: bool = True
) -> nn.Module:
    """``model`` compiled whole with Inductor freezing (weights as constants), for inference only.

    Returns a wrapper (``model`` is switched to eval mode, nothing else); call it under
    ``torch.no_grad()`` or ``torch.inference_mode()``, as the samplers call a denoiser. With gradients
    on, Inductor does not freeze and the result is an ordinary compiled model. ``mode`` and ``dynamic`` as
    :func:`compile_blocks`; ``fullgraph=True`` makes a graph break an error.
    """
    # torch.compile types its result as a callable; for a module it is an OptimizedModule (a Module).
    compiled = cast(nn.Module, torch.compile(model.eval(), mode=mode, dynamic=dynamic, fullgraph=fullgraph))
    return _Frozen(compiled)


class _Frozen(nn.Module):
    """Runs a compiled model with Inductor's ``freezing`` switched on for its (re)compilations only.

    Freezing is read from Inductor's global config when a graph is compiled, which happens lazily on
    the first call and again on a recompile; setting it around each call keeps it from reaching any
    other compiled model in the process. (Passing it as ``torch.compile(options={"freezing": True})``
    left the weights unfrozen in torch 2.13: the compiled model followed later weight changes.)
    """

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config

        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def is_compiled(model: nn.Module) -> bool:
    return all(getattr(b, "_compiled_call_impl", None) is not None for b in repeated_blocks(model))


def check_compiled(
    model_dir: str | Path,
    *,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    mode: CompileMode = "default",
    dynamic: bool | None = None,
    tolerance: float = 1e-4,
    freeze: bool = False,
) -> str:
    """Compile a pipeline folder's transformer (regionally, or whole with frozen weights when
    ``freeze``), run it once beside eager on a CFG-sized batch, and fail (ExportError naming the
    transformer) if the outputs differ beyond ``tolerance``."""
    import copy

    from osp.export.manifest import ExportError
    from osp.export.onnx import compare, component_specs
    from osp.pipelines.text_to_video import load_pipeline

    pipe = load_pipeline(model_dir)
    frames, size = frames or pipe.spec.frames, size or pipe.spec.size
    (spec,) = component_specs(pipe, frames, size, ["transformer"])
    inputs = spec.make_inputs(spec.sample, seed=1)
    with torch.no_grad():
        expected = spec.module(*inputs)
        compiled = copy.deepcopy(spec.module)
        if freeze:
            compiled = compile_frozen(compiled, mode=mode, dynamic=dynamic)
        else:
            compile_blocks(compiled.model, mode=mode, dynamic=dynamic)
        try:
            got = compiled(*inputs)
        except torch._dynamo.exc.Unsupported as err:  # fullgraph: a graph break is an error
            raise ExportError(f"transformer: torch.compile found a graph break: {err}") from err
    check = compare(
        "transformer", [expected.numpy()], [got.numpy()], tolerance, spec.sample, f"torch.compile {mode}"
    )
    what = (
        "whole model compiled, weights frozen"
        if freeze
        else f"{len(repeated_blocks(spec.module.model))} blocks compiled"
    )
    return (
        f"transformer: {what} ({mode}, fullgraph); max abs error {check.max_abs:.2e} "
        f"(relative {check.max_rel:.2e}) at {spec.sample}"
    )
