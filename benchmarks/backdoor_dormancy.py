"""Why fine-pruning misses BadNets here: is the backdoor in neurons that clean data leaves dormant?

Trains the same BadNets models as ``benchmarks/backdoor.py`` (lenet-28, 3 epochs, 5% poison to
target 0, the same seeds) on MNIST and Fashion-MNIST and reads the last convolution's ReLU'd
output on the defender's 1,000 clean images and on 2,000 triggered non-target images. Prints one
JSON object per data set: each channel's mean activation on clean data (fine-pruning's ranking)
and how much the trigger raises it, and for the 20 (channel, position) units the trigger raises
most, their rank by clean activation among all units (0 = the most dormant). Fine-pruning can
only cut the backdoor if these units are dormant. Needs ``MODELSHIELD_DATA``; about 2 minutes.
Usage: python benchmarks/backdoor_dormancy.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import Tensor, nn

from modelshield.attacks.backdoor import BadNets, make_train_fn
from modelshield.data import load_fashion_mnist, load_mnist
from modelshield.defenses.backdoor.activations import extract_features
from modelshield.defenses.backdoor.removal import _last_conv


def last_conv_output(model: nn.Module, x: Tensor) -> Tensor:
    """(N, C, H*W) ReLU'd output on x of the convolution FinePruning prunes (the last nn.Conv2d)."""
    name, conv = _last_conv(model)
    return extract_features(model, x, layer=name).relu().view(x.shape[0], conv.out_channels, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"benchmark": "backdoor_dormancy", "torch": torch.__version__}
    for name, load in (("mnist", load_mnist), ("fashion-mnist", load_fashion_mnist)):
        ds = load(None)
        res = BadNets(target=0, rate=0.05)(None, ds.x_train, ds.y_train)
        model = make_train_fn("lenet-28", epochs=3)(res.x_poisoned, res.y_poisoned)
        xe, ye = ds.x_test[1000:3000], ds.y_test[1000:3000]
        clean = last_conv_output(model, ds.x_test[:1000])
        trig = last_conv_output(model, res.apply_trigger(xe[ye != res.target]))
        ch_clean, ch_trig = clean.mean((0, 2)), trig.mean((0, 2))
        u_clean, u_trig = clean.mean(0).flatten(), trig.mean(0).flatten()
        top = (u_trig - u_clean).argsort(descending=True)[:20]
        ranks = [int((u_clean < u_clean[i]).sum()) for i in top]
        result[name] = {
            "channels": int(ch_clean.numel()),
            "channel_clean_mean_range": [round(float(ch_clean.min()), 4), round(float(ch_clean.max()), 4)],
            "channel_trigger_increase_max": round(float((ch_trig - ch_clean).max()), 4),
            "units": int(u_clean.numel()),
            "top20_trigger_units_clean_rank": ranks,
            "top20_trigger_units_clean_mean": [round(float(u_clean[i]), 4) for i in top],
            "top20_trigger_units_triggered_mean": [round(float(u_trig[i]), 4) for i in top],
        }
        print(f"[{name}] done", file=sys.stderr, flush=True)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
