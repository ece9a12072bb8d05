"""The Pallas kernels lower for the real backends, without one: `jax.export` of the jitted
forward + backward for CUDA (Triton) and TPU (our Mosaic kernel, and JAX's splash),
custom-call check disabled only for the kernel's own target. Shapes: 2B-like heads (16 q / 8 kv, head_dim 144), bf16,
segment ids + kv mask, a length (300) that is not a block multiple.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from lumina_jax.ops.attention import attention

TARGETS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
PLATFORM = {"cuda": "gpu", "tpu": "tpu"}
N = 300


def _fwd_bwd(platform, impl="pallas"):
    def fn(q, k, v, seg, kv_mask):
        def f(q, k, v):
            return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, kv_mask=kv_mask,
                             impl=impl, platform=platform, interpret=False)

        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(out)

    return jax.jit(fn)


def _args(b=1, n=N, hq=16, hkv=8, d=144):
    s = jax.ShapeDtypeStruct
    return (s((b, n, hq, d), jnp.bfloat16), s((b, n, hkv, d), jnp.bfloat16),
            s((b, n, hkv, d), jnp.bfloat16), s((b, n), jnp.int32), s((b, n), jnp.bool_))


# (target platform, impl) -> the kernels its forward + backward must call
KERNELS = {
    ("cuda", "pallas"): ("lumina_flash_fwd", "lumina_flash_dq", "lumina_flash_dkv"),
    ("tpu", "pallas"): ("lumina_flash_fwd", "lumina_flash_dq", "lumina_flash_dkv"),
    # splash's fused backward computes dq, dk and dv in one kernel
    ("tpu", "splash"): ("splash_mha_fwd_segmented", "splash_mha_dkv_segmented"),
}


@pytest.mark.parametrize("target_platform,impl", KERNELS)
def test_kernels_forward_backward_export(target_platform, impl):
    target = TARGETS[target_platform]
    exp = export.export(
        _fwd_bwd(PLATFORM[target_platform], impl), platforms=[target_platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(*_args())
    text = exp.mlir_module()
    kernels = KERNELS[target_platform, impl]
    assert text.count("stablehlo.custom_call") == len(kernels)
    for kernel in kernels:
        assert kernel in text
    padded = 320 if target_platform == "cuda" else 384  # block multiples
    assert f"{padded}x{padded}" not in text and f"{N}x{N}" not in text  # no N x N scores
    assert len(exp.out_avals) == 4


def test_export_without_disabling_the_check_fails():
    with pytest.raises(ValueError, match="custom call"):
        export.export(_fwd_bwd("gpu"), platforms=["cuda"])(*_args(hq=2, hkv=1, d=64))


def test_auto_says_which_kernel_it_picked_once_per_shape(capsys):
    from lumina_jax.ops.attention import kernels_for

    q, k, v = _args(hq=4, hkv=2, d=64)[:3]
    f = lambda q, k, v: attention(q, k, v, impl="auto")
    with kernels_for("gpu"):  # this CPU has no cuDNN: auto falls back to our kernel
        jax.eval_shape(f, q, k, v)
        jax.eval_shape(f, q, k, v)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "attention auto on gpu: pallas for q [1, 300, 4, 64], k [1, 300, 2, 64] bfloat16 "
        "(cudnn refused: "), lines
    with kernels_for("tpu"):  # a new function: a traced one keeps the kernels it picked
        jax.eval_shape(lambda q, k, v: attention(q, k, v, impl="auto"), q, k, v)
    assert capsys.readouterr().out.startswith("attention auto on tpu: splash for q")


def test_auto_on_tpu_falls_back_to_our_kernel_where_splash_refuses(monkeypatch, capsys):
    from lumina_jax.ops import attention as attn_mod

    def refuse(*args, **kwargs):
        raise NotImplementedError("block_q must be a multiple of 128")

    monkeypatch.setitem(attn_mod._VENDOR, "splash", refuse)
    q, k, v = _args(hq=4, hkv=2, d=64)[:3]
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, platform="tpu"))(q, k, v))
    assert "lumina_flash_fwd" in jaxpr
    assert capsys.readouterr().out.startswith(
        "attention auto on tpu: pallas for q [1, 300, 4, 64], k [1, 300, 2, 64] bfloat16 "
        "(splash refused: NotImplementedError: block_q must be a multiple of 128)")
