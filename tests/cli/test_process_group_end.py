"""Under torchrun a command leaves its process group when it is done: a gloo group left to the interpreter's exit
can abort the process ('terminate called without an active exception', exit -6) after the work succeeded."""
import torch.distributed as dist

from lmscope.cli.main import main


def test_a_finished_command_destroys_the_process_group(tmp_path, capsys):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["sites", "--model", "random:llama"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert main(["sites", "--model", "random:llama"]) == 0          # and without one, nothing to do
