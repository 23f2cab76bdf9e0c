from osp.cli.main import cli

cli(prog_name="osp")
