#!/usr/bin/env python3
"""Cut the bundled default dataset: the first 10,000 MNIST training digits and labels.

    python3 data/make_bundled.py ../shared/data/mnist data/mnist-10k
"""
import gzip
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
N = 10_000
with gzip.open(f"{src}/train-images-idx3-ubyte.gz") as f:
    magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
    assert magic == 0x803 and n >= N
    pixels = f.read(N * rows * cols)
with open(f"{dst}/train-images-idx3-ubyte.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    f.write(struct.pack(">IIII", magic, N, rows, cols) + pixels)
with gzip.open(f"{src}/train-labels-idx1-ubyte.gz") as f:
    magic, n = struct.unpack(">II", f.read(8))
    assert magic == 0x801 and n >= N
    labels = f.read(N)
with open(f"{dst}/train-labels-idx1-ubyte.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    f.write(struct.pack(">II", magic, N) + labels)
