"""bf16 only where the hardware has it: detection from the CPU flags, fallback unless forced."""
import torch

from recoder_dist.precision import cpu_flags, kernel_path, native_bf16, training_dtype

CPU = torch.device("cpu")
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu avx2\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_is_native_only_with_avx512_bf16_or_amx():
    assert not native_bf16(CPU, AVX2_ONLY)
    assert native_bf16(CPU, AVX512_BF16)
    assert native_bf16(CPU, AVX2_ONLY | {"amx_bf16"})
    assert "emulated" in kernel_path(CPU, AVX2_ONLY) and "native (avx512_bf16)" in kernel_path(CPU, AVX512_BF16)


def test_emulated_bf16_falls_back_to_float32_with_a_warning_unless_forced():
    dtype, note = training_dtype("bfloat16", False, CPU, AVX2_ONLY)
    assert dtype == "float32" and "train.force_dtype=true" in note and "no native bf16" in note
    dtype, note = training_dtype("bfloat16", True, CPU, AVX2_ONLY)
    assert dtype == "bfloat16" and "emulated" in note
    assert training_dtype("bfloat16", False, CPU, AVX512_BF16) == ("bfloat16", None)
    assert training_dtype("float32", False, CPU, AVX2_ONLY) == ("float32", None)
