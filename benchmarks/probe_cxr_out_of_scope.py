"""Can the bundled cxr-classify model tell a TB X-ray (outside its four classes) from the images it knows,
without retraining? Post-hoc out-of-scope scores compared, JSON out (a probe for the "outside my classes"
work of the classifier; not a shipped feature).

Scores: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017), energy (Liu et al., NeurIPS 2020) and
the Mahalanobis distance to the class means of the penultimate features (Lee et al., NeurIPS 2018; shared
covariance). In-scope: 120 images of the classifier's held-out test split; out-of-scope: 120 TBX11K TB
images (a source and a disease the classifier never saw); class means from 300 training images.

    python benchmarks/probe_cxr_out_of_scope.py --out benchmarks/results/cxr_out_of_scope_probe.json
"""

import argparse
import random
import time

import numpy as np
import torch
from _common import ROOT, write_json

torch.set_num_threads(1)
from pathlib import Path

from pulmo.io import read_image
from pulmo.tasks.cxr_classify import LABELS, CxrClassifier, CxrClassifyConfig, collect_records, split_three

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cxr_out_of_scope_probe.json"))
args = ap.parse_args()
D = str(ROOT.parent / "shared" / "data" / "cxr") + "/"
cfg = CxrClassifyConfig(
    kermany=D + "chest_xray_pneumonia",
    covid_chestxray=D + "covid-chestxray-dataset",
    covid_radiography=D + "COVID-19_Radiography_Dataset",
)
recs, _ = collect_records(cfg)
sp = split_three(recs, 0.15, 0.15, 0)
clf = CxrClassifier()
m = clf.model
feats = {}


def hook(mod, inp, out):
    feats["f"] = inp[0].detach()


m.classifier.register_forward_hook(hook)


def run(paths):
    F = []
    L = []
    for p in paths:
        x, _ = clf.pre(read_image(p))
        with torch.no_grad():
            lg = m(torch.from_numpy(x)[None, None]).float()
        F.append(feats["f"][0].numpy())
        L.append(lg[0].numpy())
    return np.array(F), np.array(L)


rng = random.Random(0)
tr = rng.sample(sp["train"], 300)
te = rng.sample(sp["test"], 120)
tb = sorted(Path(D + "TBX11K/imgs/tb").glob("*.jpg"))
tb = rng.sample(tb, 120)
t = time.time()
Ftr, Ltr = run([r["image"] for r in tr])
ytr = np.array([LABELS.index(r["label"]) for r in tr])
Fte, Lte = run([r["image"] for r in te])
Ftb, Ltb = run(tb)
print("sec", time.time() - t)
T = clf.temperature


def msp(L):
    z = L / T
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return p.max(1), p.argmax(1)


def energy(L):
    z = L / T
    return -T * np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) - z.max(1) * T


# Mahalanobis: class means, shared covariance (Lee et al. 2018) on train feats
mu = np.stack([Ftr[ytr == k].mean(0) for k in range(4)])
X = Ftr - mu[ytr]
cov = X.T @ X / len(X) + 1e-3 * np.eye(X.shape[1])
P = np.linalg.inv(cov)


def maha(F):
    return np.min([np.einsum("ij,jk,ik->i", F - mu[k], P, F - mu[k]) for k in range(4)], axis=0)


from pulmo.metrics import roc_auc

result = {"n_train_means": len(tr), "n_in_scope": len(te), "n_tb": len(tb), "scores": {}}
tb_pred = msp(Ltb)[1]
for name, f in (
    ("max_softmax", lambda L, F: -msp(L)[0]),
    ("energy", lambda L, F: energy(L)),
    ("mahalanobis", lambda L, F: maha(F)),
):
    s_in = f(Lte, Fte)
    s_out = f(Ltb, Ftb)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))].astype(bool)
    thr = np.quantile(s_in, 0.95)
    result["scores"][name] = {
        "auroc_tb_vs_in_scope": roc_auc(np.r_[s_in, s_out], y),
        "tb_flagged_at_95pct_in_scope_kept": float((s_out > thr).mean()),
        "tb_called_covid19_and_in_scope": float(
            ((s_out <= thr) & (tb_pred == LABELS.index("covid19"))).mean()
        ),
    }
result["tb_predicted"] = dict(zip(LABELS, np.bincount(tb_pred, minlength=4).tolist()))
result["seconds"] = round(time.time() - t, 1)
write_json(result, args.out)
