"""What this machine's CPU can do for a GVSL step: dense matrix multiply and the step's largest convolution.

Prints GFLOP/s of a 4096² float32 matrix product (MKL; the best dense rate torch reaches here) and of the
forward, input-gradient and weight-gradient passes of the backbone's largest layer (3³ convolution 96 -> 32 channels
on 2 x 64³ voxels, channels-last-3d, oneDNN), so that the time of a step (``benchmarks/step.py --flops``) can be
compared with a floor: FLOPs per step / the best rate.

    python benchmarks/cpu_peak.py [--threads N]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def seconds(fn, repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    result = {"threads": torch.get_num_threads(),
              "matmul_gflops": 2 * 4096 ** 3 / seconds(lambda: a @ b, args.repeats) / 1e9}
    cl = torch.channels_last_3d
    x = torch.randn(2, 96, 64, 64, 64).contiguous(memory_format=cl)
    w = torch.randn(32, 96, 3, 3, 3).contiguous(memory_format=cl)
    grad = torch.randn(2, 32, 64, 64, 64).contiguous(memory_format=cl)
    flops = 2 * 27 * 96 * 32 * 2 * 64 ** 3

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(grad, x, w, None, [1] * 3, [1] * 3, [1] * 3, False,
                                                           [0] * 3, 1, mask)

    for name, fn in (("forward", lambda: torch.nn.functional.conv3d(x, w, padding=1)),
                     ("input_gradient", backward([True, False, False])),
                     ("weight_gradient", backward([False, True, False]))):
        result[f"conv3d_96_32_{name}_gflops"] = flops / seconds(fn, args.repeats) / 1e9
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
