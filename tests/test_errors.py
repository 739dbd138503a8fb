"""Every documented error: bad input to the ops, the backends, the model and the trainer gets a clear
message naming the argument, what was expected and what came."""
import pytest
import torch

import cases
import ntm_fast
from ntm_fast import NTM, ops
from ntm_fast.tools.train import TrainConfig, load_checkpoint


def addr(**over):
    inputs = cases.address_inputs(2, 7, 3, 2, 1, dtype=torch.float32)
    inputs.update(over)
    return inputs


@pytest.mark.parametrize("over,exc,pattern", [
    (dict(key=torch.zeros(2, 2, 4)), ValueError, r"argument 'key' must have shape \[B, H, M\] = \[2, \?, 3\], got \[2, 2, 4\]"),
    (dict(w_prev=torch.zeros(2, 2, 8)), ValueError, r"'w_prev' must have shape \[B, H, N\] = \[2, 2, 7\], got \[2, 2, 8\]"),
    (dict(beta=torch.zeros(2, 3)), ValueError, r"'beta' must have shape \[B, H\] = \[2, 2\], got \[2, 3\]"),
    (dict(gamma=torch.zeros(2, 2, 1)), ValueError, r"'gamma' must have 2 dimensions \[B, H\] = \[2, 2\], got shape \[2, 2, 1\]"),
    (dict(memory=torch.zeros(2, 7)), ValueError, r"'memory' must have 3 dimensions \[B, N, M\]"),
    (dict(shift=torch.zeros(2, 2, 4)), ValueError, r"'shift' must have an odd last dimension 2S\+1.*got 4"),
    (dict(gate=torch.zeros(2, 2, dtype=torch.int64)), TypeError, r"'gate' must be a floating-point tensor.*torch.int64"),
    (dict(gate=torch.zeros(2, 2, dtype=torch.float64)), TypeError, r"'gate' has dtype torch.float64 but 'memory' has torch.float32"),
    (dict(key=[[1.0]]), TypeError, r"'key' must be a torch.Tensor of shape \[B, H, M\] = \[2, \?, 3\], got list"),
    (dict(gate=torch.zeros(2, 2, device="meta")), ValueError, r"'gate' is on meta but 'memory' is on cpu"),
    (dict(memory=torch.zeros(2, 0, 3), w_prev=torch.zeros(2, 2, 0)), ValueError, r"'memory' has an empty dimension N"),
])
def test_address_input_errors(over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.address(**addr(**over), backend="reference")


def test_read_write_errors():
    memory = torch.zeros(2, 7, 3)
    with pytest.raises(ValueError, match=r"read: argument 'w' must have shape \[B, H, N\] = \[2, \?, 7\], got \[2, 1, 6\]"):
        ops.read(memory, torch.zeros(2, 1, 6))
    with pytest.raises(ValueError, match=r"write: argument 'erase' must have shape \[B, W, M\] = \[2, 2, 3\], got \[2, 1, 3\]"):
        ops.write(memory, torch.zeros(2, 2, 7), torch.zeros(2, 1, 3), torch.zeros(2, 2, 3))


def test_memory_step_errors():
    inputs = cases.memory_step_inputs(2, 7, 3, 1, 2, 1, dtype=torch.float32)
    bad = inputs["write_heads"]._replace(shift=torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"'write_heads.shift' must have shape \[B, W, K\] = \[2, 2, 3\], got \[2, 2, 5\]"):
        ops.memory_step(**{**inputs, "write_heads": bad})
    with pytest.raises(TypeError, match=r"'write_heads' must carry fields .*ReadHeads lacks erase, add"):
        ops.memory_step(**{**inputs, "write_heads": inputs["read_heads"]})
    with pytest.raises(ValueError, match=r"'w_read_prev' must have shape \[B, R, N\] = \[2, 1, 7\]"):
        ops.memory_step(**{**inputs, "w_read_prev": torch.zeros(2, 1, 9)})


def test_unknown_and_unavailable_backends():
    inputs = addr()
    with pytest.raises(ValueError, match=r"unknown backend 'fast'.*known: auto, reference.*available here: .*reference"):
        ops.address(**inputs, backend="fast")
    with pytest.raises(ValueError, match=r"backend 'cuda' is unavailable for cpu tensors: .*Available for cpu: .*reference"):
        ops.address(**inputs, backend="cuda")
    assert "reference" in ntm_fast.available_backends()
    assert "reference" in ntm_fast.available_backends("cpu")


def test_a_backend_that_runs_nowhere_here_says_why(monkeypatch):
    """Without a GPU and without the interpreter, triton serves no device: the reason is its own, not a list."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: triton runs on it")
    from ntm_fast.ops import dispatch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dispatch.forget()
    try:
        with pytest.raises(ValueError, match=r"backend 'triton' is unavailable for cpu tensors: (no CUDA GPU is visible "
                                             r"and TRITON_INTERPRET=1 is not set|triton is not installed)"):
            ops.address(**addr(), backend="triton")
    finally:
        dispatch.forget()


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(controller="gru"), r"'controller' must be one of 'lstm', 'feedforward', got 'gru'"),
    (dict(memory_init="zeros"), r"'memory_init' must be one of 'constant', 'learned', 'random', got 'zeros'"),
    (dict(read_heads=0), r"'read_heads' must be an integer >= 1, got 0"),
    (dict(memory_slots=2.5), r"'memory_slots' must be an integer >= 1, got 2.5"),
    (dict(shift_range=-1), r"'shift_range' must be an integer >= 0, got -1"),
])
def test_model_constructor_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        NTM(9, 8, **kwargs)


def test_model_forward_errors():
    model = NTM(9, 8, controller_size=8, memory_slots=8, memory_width=4)
    with pytest.raises(ValueError, match=r"'x' must have shape \[T, B, X\] with T, B >= 1 and X = 9, got \[5, 2, 8\]"):
        model(torch.zeros(5, 2, 8))
    for empty in ([0, 2, 9], [5, 0, 9]):  # no time step or no sequence: an error, not an empty stack
        with pytest.raises(ValueError, match=rf"'x' must have shape \[T, B, X\].*got \{empty}"):
            model(torch.zeros(*empty))
    with pytest.raises(ValueError, match=r"'x' is torch.float64 on cpu but the model is torch.float32"):
        model(torch.zeros(5, 2, 9, dtype=torch.float64))


@pytest.mark.parametrize("over,pattern", [
    (dict(steps=0), r"'steps' must be an integer >= 1, got 0"),
    (dict(optimizer="sgd"), r"'optimizer' must be 'rmsprop' or 'adam', got 'sgd'"),
    (dict(lr=-1.0), r"'lr' must be a positive number, got -1.0"),
    (dict(task="sorting"), r"unknown task 'sorting'"),
])
def test_train_config_errors(over, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**over).validate()


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "none.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is corrupt or not a checkpoint: the file cannot be read"):
        load_checkpoint(str(junk))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="is not an ntm_fast checkpoint"):
        load_checkpoint(str(other))
