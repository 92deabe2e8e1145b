#!/usr/bin/env python3
"""Converts pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) to
safetensors for `ddpm eval fid --inception`. Optional: ddpm reads the .pth file directly too.

    python3 scripts/inception_to_safetensors.py pt_inception-2015-12-05-6726825d.pth inception.safetensors

Needs torch (to unpickle the checkpoint); writes the safetensors format by hand (an 8-byte
little-endian header length, a JSON header, the raw little-endian tensors).
"""
import json
import struct
import sys

import torch


def main(src, dst):
    state = torch.load(src, map_location="cpu", weights_only=True)
    header, blobs, offset = {}, [], 0
    for name in sorted(state):
        t = state[name]
        if not t.dtype.is_floating_point:
            continue  # num_batches_tracked
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    print(f"{len(header)} tensors written to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
