"""Train a torchvision ResNet-18 for a few hundred steps with normlab.lens attached, then write its report.

    python examples/lens/train_resnet18.py                       # CIFAR-10 under ./data if it is there,
                                                                 # torchvision's FakeData otherwise
    python examples/lens/train_resnet18.py --download            # fetch CIFAR-10 first (needs the internet)
    python examples/lens/train_resnet18.py --steps 1000 --device cuda --out lens-resnet18

The training loop below is an ordinary one; the lens is the two marked lines. Needs torchvision
(`pip install 'normlab[vision]'`). Output: OUT/lens.csv, lens.json, report.md, report.html, lens.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import normlab


def data(root: Path, download: bool, batch_size: int):
    import torchvision
    import torchvision.transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=download, transform=tf)
        name = "CIFAR-10"
    except RuntimeError as exc:  # not under root and not downloaded: say so, and go on with stand-in images
        print(
            f"CIFAR-10 not found under {root} ({exc}); using torchvision's FakeData (pass --download to fetch "
            "CIFAR-10, or --data to point at a copy)",
            file=sys.stderr,
        )
        train = torchvision.datasets.FakeData(50_000, (3, 32, 32), 10, transform=tf, random_offset=0)
        name = "FakeData"
    loader = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    return loader, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    ap.add_argument("--every", type=int, default=10, help="lens probe interval in steps (default 10)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--data", type=Path, default=Path("data"), help="CIFAR-10 root (default ./data)")
    ap.add_argument("--download", action="store_true", help="download CIFAR-10 into --data first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=Path("lens-resnet18"), help="the lens folder (default lens-resnet18)")
    args = ap.parse_args()

    import torchvision

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    loader, name = data(args.data, args.download, args.batch_size)

    lens = normlab.lens.attach(model, optimizer, every=args.every, out=args.out, overwrite=True)  # <- the lens
    model.train()
    step = 0
    while step < args.steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}/{args.steps} ({name}): loss {loss.item():.3f}", flush=True)
            if step == args.steps:
                break
    lens.close()  # <- flushes lens.csv, writes lens.json

    for path in normlab.lens.report(args.out, overwrite=True):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
