#!/usr/bin/env bash
# Run a command as on a CPU without AVX-512 or AMX, as far as software dispatch allows:
#
#     scripts/avx2_only.sh .venv/bin/stagepilot bench plan --json
#     scripts/avx2_only.sh .venv/bin/stagepilot drive perception.learned.precision=fp32 perception.learned.backend=openvino
#
# numpy's own SIMD loops stop at AVX2 (X86_V3), OpenBLAS takes its Haswell kernels, oneDNN
# (PyTorch's convolutions) is capped at AVX2, and so are PyTorch's own kernels and the code
# torch.compile generates (ATEN_CPU_CAPABILITY); OpenVINO's oneDNN reads the same cap. What it
# cannot change: onnxruntime's kernels (they choose for themselves: pin the learned stage to
# `backend=openvino` or `backend=torch`, and `precision=fp32`, bf16 being an AVX-512/AMX path),
# compiled libraries without runtime dispatch, and the
# machine's clock, caches and memory. A figure taken this way is an emulation and is named so.
export NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"
export OPENBLAS_CORETYPE=Haswell
export ONEDNN_MAX_CPU_ISA=AVX2
export ATEN_CPU_CAPABILITY=avx2
exec "$@"
