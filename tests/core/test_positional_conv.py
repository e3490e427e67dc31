"""The positional conv by overlap-save (`core.models.components.overlap_save`): in inference it stands in for
the grouped Conv1d and gives its output (odd and even kernels, short and long inputs, a padded batch); it is
not used where the plain conv must run (training, a gradient to the weight, ONNX export), and a changed weight
is not served from the cached spectrum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import core.models.components as components
from core.models.components import ConvolutionalPositionalEmbedding


def reference(module: ConvolutionalPositionalEmbedding, x: torch.Tensor) -> torch.Tensor:
    conv = module.conv
    y = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
    if module.kernel % 2 == 0:
        y = y[..., :-1]
    return F.gelu(y).transpose(1, 2)


@pytest.mark.parametrize("dim, kernel, groups", [(256, 128, 16), (48, 7, 4), (16, 8, 2), (12, 1, 1)])
@pytest.mark.parametrize("frames", [1, 3, 129, 700])
def test_overlap_save_equals_the_grouped_conv(dim: int, kernel: int, groups: int, frames: int) -> None:
    torch.manual_seed(frames)
    module = ConvolutionalPositionalEmbedding(dim, kernel, groups).eval()
    x = torch.randn(3, frames, dim)
    x[1, frames // 2 :] = 0.0  # a padded row, as the encoder zeroes padding before this conv
    with torch.no_grad():
        got = module(x)
    assert module._spectrum is not None  # the overlap-save path ran
    torch.testing.assert_close(got, reference(module, x), atol=2e-5, rtol=1e-5)


def test_the_plain_conv_runs_in_training_with_gradients_and_in_onnx_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = components.overlap_save

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(components, "overlap_save", counted)
    module = ConvolutionalPositionalEmbedding(32, 16, 4)
    x = torch.randn(2, 40, 32)
    module.train()
    module(x).sum().backward()  # training: the conv, and the weight gets its gradient
    assert calls == [] and module.conv.weight.grad is not None
    module.eval()
    module(x)  # eval with a gradient to the weight (fine-tuning in eval mode): the conv
    assert calls == []
    with torch.no_grad():
        module(x)
    assert calls == [1]
    module.requires_grad_(False)
    torch.onnx.export(module, (x,), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False)
    assert calls == [1]  # traced: the plain conv (the exporter has no rfft)


def test_a_changed_weight_is_not_served_from_the_cached_spectrum() -> None:
    module = ConvolutionalPositionalEmbedding(32, 16, 4).eval()
    x = torch.randn(1, 50, 32)
    with torch.no_grad():
        before = module(x)
        module.conv.weight.mul_(2.0)  # in place, as load_state_dict and optimisers write
        after = module(x)
        torch.testing.assert_close(after, reference(module, x), atol=2e-5, rtol=1e-5)
        assert not torch.allclose(before, after)
        module.load_state_dict({k: v * 0.5 for k, v in module.state_dict().items()})
        torch.testing.assert_close(module(x), reference(module, x), atol=2e-5, rtol=1e-5)


def test_low_precision_inputs_are_computed_in_fp32_and_returned_as_given() -> None:
    module = ConvolutionalPositionalEmbedding(32, 16, 4).eval()
    x = torch.randn(2, 60, 32)
    with torch.no_grad():
        got = module(x.bfloat16().float().bfloat16())
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), reference(module, x.bfloat16().float()), atol=3e-2, rtol=3e-2)


def test_a_macs_counter_sees_the_plain_conv() -> None:
    """MACs are the architecture's: under a dispatch mode (core.evaluation.MacCounter) the conv runs as is, so
    the counted MACs equal the formula's (`num_macs`)."""
    from core.evaluation import MacCounter

    module = ConvolutionalPositionalEmbedding(32, 16, 4).eval()
    with torch.no_grad(), MacCounter() as counter:
        module(torch.randn(1, 50, 32))
    assert module._spectrum is None
    assert counter.total == module.num_macs(50)


def test_a_module_made_under_inference_mode_runs_the_plain_conv() -> None:
    """Weights created under torch.inference_mode() have no version counter to key the cached spectrum by."""
    with torch.inference_mode():
        module = ConvolutionalPositionalEmbedding(32, 16, 4).eval()
        x = torch.randn(1, 20, 32)
        got = module(x)
        assert module._spectrum is None
        torch.testing.assert_close(got, reference(module, x))
