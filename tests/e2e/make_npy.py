#!/usr/bin/env python3
"""Writes NumPy .npy files with the Python standard library only (no numpy needed).

As a program:
  make_npy.py regression --samples 64 --dim 4 --seed 1 X.npy Y.npy
      x ~ N(0, 1) of shape (samples, dim) and y = sum(x^2) of shape (samples, 1), float32
  make_npy.py bad KIND OUT.npy
      a deliberately broken file: wrong-magic, truncated, fortran, f2 (float16 dtype), nan

As a module: write_npy(path, shape, values, ...) and regression(samples, dim, seed).
Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
"""
import argparse
import math
import random
import struct

MAGIC = b"\x93NUMPY"


def header_bytes(shape, descr="<f4", fortran_order=False, magic=MAGIC):
    """Magic, version 1.0, header length and the header dict, padded to 64 bytes as numpy does."""
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    text = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran_order else "False", dims)
    prefix = len(magic) + 2 + 2
    pad = 64 - (prefix + len(text) + 1) % 64
    text += " " * (pad % 64) + "\n"
    return magic + bytes([1, 0]) + struct.pack("<H", len(text)) + text.encode("latin1")


def write_npy(path, shape, values, descr="<f4", fortran_order=False, magic=MAGIC, drop_bytes=0):
    """Writes values (row-major, len = product(shape)) as descr ('<f4', '<f8' or '<f2')."""
    code = {"<f4": "f", "<f8": "d", "<f2": "e"}[descr]
    data = struct.pack("<%d%s" % (len(values), code), *values)
    blob = header_bytes(shape, descr, fortran_order, magic) + data
    with open(path, "wb") as f:
        f.write(blob[:len(blob) - drop_bytes] if drop_bytes else blob)


def regression(samples, dim, seed):
    """x ~ N(0, 1) (samples x dim, row-major) and y = sum(x^2) per row."""
    rng = random.Random(seed)
    x = [rng.gauss(0.0, 1.0) for _ in range(samples * dim)]
    # Round through float32 first so that y matches the x that is stored.
    x = list(struct.unpack("<%df" % len(x), struct.pack("<%df" % len(x), *x)))
    y = [sum(v * v for v in x[i * dim:(i + 1) * dim]) for i in range(samples)]
    return x, y


def write_regression(x_path, y_path, samples, dim, seed):
    x, y = regression(samples, dim, seed)
    write_npy(x_path, (samples, dim), x)
    write_npy(y_path, (samples, 1), y)


BAD_KINDS = ("wrong-magic", "truncated", "fortran", "f2", "nan")


def write_bad(kind, path, samples=8, dim=4):
    x, _ = regression(samples, dim, 0)
    if kind == "wrong-magic":
        write_npy(path, (samples, dim), x, magic=b"\x93NUMPX")
    elif kind == "truncated":
        write_npy(path, (samples, dim), x, drop_bytes=6)
    elif kind == "fortran":
        write_npy(path, (samples, dim), x, fortran_order=True)
    elif kind == "f2":
        write_npy(path, (samples, dim), x, descr="<f2")
    elif kind == "nan":
        x[5] = math.nan
        write_npy(path, (samples, dim), x)
    else:
        raise ValueError("unknown kind %r (choose %s)" % (kind, ", ".join(BAD_KINDS)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("regression", help="x ~ N(0,1), y = sum(x^2)")
    reg.add_argument("--samples", type=int, default=64)
    reg.add_argument("--dim", type=int, default=4)
    reg.add_argument("--seed", type=int, default=0)
    reg.add_argument("x")
    reg.add_argument("y")
    bad = sub.add_parser("bad", help="a broken file")
    bad.add_argument("kind", choices=BAD_KINDS)
    bad.add_argument("out")
    args = parser.parse_args()
    if args.command == "regression":
        write_regression(args.x, args.y, args.samples, args.dim, args.seed)
    else:
        write_bad(args.kind, args.out)


if __name__ == "__main__":
    main()
