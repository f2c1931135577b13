"""``NoduleNet3d.forward(x, targets=...)`` is the nodule training contract (the loss runs inside the model's own
``forward``, so a ``DistributedDataParallel`` wrapper works and synchronises every gradient): the loss equals the
one ``pulmo.tasks.nodule.nodule_loss`` computed before the change, bit for bit; ``pulmo train nodule`` runs under
``torchrun`` with two CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pulmo.datasets.synthetic_nodules import Background, collate, make_sample
from pulmo.models import create_model
from pulmo.models.nodulenet import (
    box_iou_cubes,
    decode,
    dice_bce_loss,
    encode,
    nms_cubes,
    roi_sample,
    rpn_loss,
    rpn_targets,
)
from pulmo.tasks import nodule as nod
from pulmo.transforms.ct import prepare_ct
from tests.tasks.test_nodule import _chest


# The loss as pulmo.tasks.nodule.nodule_loss computed it before it moved into the model (verbatim copy, the
# reference): it calls the network's submodules directly.
def _old_nodule_loss(model, batch: dict[str, Any], rng: torch.Generator | None = None) -> torch.Tensor:
    """RPN focal + box loss, FPR head loss on proposals and jittered ground truth (BCE + smooth L1), mask
    Dice + BCE on jittered ground-truth boxes.

    Every tensor of ``batch`` must be on the model's device; the targets are built there (the jitter is drawn on
    the CPU, from ``rng`` or the global generator, then moved)."""
    image = batch["image"]
    device = image.device
    out = model.features(image, batch["coords"])
    cls, reg = model.flat_rpn(out)
    anchors = model.anchors(out["cls"].shape[2:], device=device)
    loss = image.new_zeros(())
    roi_b, roi_boxes, roi_lab, roi_tgt = [], [], [], []
    mask_b, mask_boxes, mask_tgt = [], [], []
    for b, gt in enumerate(batch["boxes"]):
        labels, targets = rpn_targets(anchors, gt)
        loss = loss + rpn_loss(cls[b], reg[b], labels, targets) / len(batch["boxes"])
        with torch.no_grad():
            scores = torch.sigmoid(cls[b].float())
            top = scores.topk(min(len(scores), 500)).indices
            props = decode(reg[b, top].float(), anchors[top])
            props[:, 3] = props[:, 3].clamp(min=2.0)
            props = props[nms_cubes(props, scores[top], 0.1, 12)]
            if len(gt):
                jit = gt.repeat(2, 1)
                jit[:, :3] += torch.randn(jit[:, :3].shape, generator=rng).to(device) * 0.1 * jit[:, 3:]
                jit[:, 3:] *= torch.exp(torch.randn(jit[:, 3:].shape, generator=rng).to(device) * 0.1)
                props = torch.cat([props, jit])
                iou = box_iou_cubes(props, gt)
                best, arg = iou.max(1)
                lab = torch.where(best >= 0.4, 1.0, torch.where(best < 0.2, 0.0, -1.0))
                tgt = encode(gt[arg], props)
                mb = gt.clone()
                mb[:, :3] += torch.randn(mb[:, :3].shape, generator=rng).to(device) * 0.05 * mb[:, 3:]
                mb[:, 3:] *= torch.exp(torch.randn(mb[:, 3:].shape, generator=rng).to(device) * 0.05)
                mask_b.append(torch.full((len(gt),), b, device=device))
                mask_boxes.append(mb)
                mask_tgt.append((b, batch["masks"][b]))
            else:
                lab, tgt = torch.zeros(len(props), device=device), torch.zeros((len(props), 4), device=device)
        roi_b.append(torch.full((len(props),), b, device=device))
        roi_boxes.append(props)
        roi_lab.append(lab)
        roi_tgt.append(tgt)
    bi, boxes, lab, tgt = torch.cat(roi_b), torch.cat(roi_boxes), torch.cat(roi_lab), torch.cat(roi_tgt)
    keep = lab >= 0
    if keep.any():
        logit, delta = model.fpr_head(out["f2"], image, bi[keep], boxes[keep])
        loss = loss + F.binary_cross_entropy_with_logits(logit.float(), lab[keep])
        pos = lab[keep] == 1
        if pos.any():
            loss = loss + F.smooth_l1_loss(delta[pos].float(), tgt[keep][pos], beta=1 / 9)
    if mask_boxes:
        mb, mbi = torch.cat(mask_boxes), torch.cat(mask_b)
        logits = model.mask_head(out["f2"], out["f4"], image, mbi, mb)
        targets = []
        for b, masks in mask_tgt:
            sel = mb[mbi == b]
            for j in range(len(sel)):
                t = roi_sample(masks[j][None, None].float(), torch.zeros(1, dtype=torch.long, device=device), sel[j:j + 1],
                               model.mask_size, 1.0, mode="nearest")
                targets.append(t[0, 0])
        loss = loss + dice_bce_loss(logits, torch.stack(targets))
    return loss


def _batch(max_nodules: int, seed: int = 0) -> dict[str, Any]:
    prep = prepare_ct(_chest(), spacing_mm=1.5)
    bg = Background("chest", prep, np.ones(prep.image.shape, bool), np.argwhere(prep.lungs))
    rng = np.random.default_rng(seed)
    return collate([make_sample(bg, 32, max_nodules, rng) for _ in range(2)])


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("nodulenet-3d", channels=[8, 16, 16], mask_size=8, roi_size=4).train()


@pytest.mark.parametrize("max_nodules, seed", [(3, 0), (3, 5), (0, 0)])
def test_forward_with_targets_is_the_old_loss_bit_for_bit(max_nodules, seed):
    batch = _batch(max_nodules, seed)
    if max_nodules:
        assert sum(len(b) for b in batch["boxes"]) > 0  # the jitter draws from rng and the mask head both run
    net = _net()
    ref = _old_nodule_loss(net, batch, rng=torch.Generator().manual_seed(7))
    ref.backward()
    ref_grads = {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    new = net(batch["image"], targets=batch, rng=torch.Generator().manual_seed(7))
    assert new.dim() == 0 and torch.equal(new, ref), (new.item(), ref.item())
    new.backward()
    for k, p in net.named_parameters():
        assert (p.grad is None) == (ref_grads[k] is None), k
        assert p.grad is None or torch.equal(p.grad, ref_grads[k]), k
    # the task's function is a thin call of the model, the rng still threaded through
    again = nod.nodule_loss(net, batch, rng=torch.Generator().manual_seed(7))
    assert torch.equal(again, ref)
    # the global generator when no rng is given, as before
    torch.manual_seed(3)
    a = _old_nodule_loss(net, batch)
    torch.manual_seed(3)
    assert torch.equal(nod.nodule_loss(net, batch), a)


def test_forward_without_targets_or_in_eval_mode_detects():
    batch = _batch(2)
    net = _net().eval()
    x = batch["image"][:1]
    det = net(x)
    assert set(det) == {"boxes", "probability", "rpn", "masks"}
    same = net(x, targets=batch)  # eval mode: targets are ignored
    assert all(torch.equal(det[k], same[k]) for k in det)
    ref = nod.detect_prepared(net, x[0, 0].numpy())
    assert all(torch.equal(det[k].cpu(), ref[k]) for k in det)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_background(path):
    import SimpleITK as sitk

    from tests.tasks.test_registry import _chest_hu

    img = sitk.GetImageFromArray(_chest_hu(nodule=False).astype(np.int16))
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((-40.0, -40.0, -100.0))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("epochs", [1, 2])
def test_train_nodule_under_torchrun_two_cpu_processes(tmp_path, epochs):
    """Two gloo processes; the second epoch's forward would fail if a parameter left without gradient in the first
    step (the mask head without nodules, the box regressions without positives) were not allowed for."""
    background = _write_background(tmp_path / "chest.mhd")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pulmo", "--no-progress", "train", "nodule",
           "--backgrounds", str(background), "--patch", "32", "--samples-per-epoch", "4", "--val-samples", "2",
           "--max-nodules", "2", "--channels", "8,16,16", "--blocks", "1,1,1", "--batch-size", "1",
           "--epochs", str(epochs), "--max-steps-per-epoch", "1", "--device", "cpu", "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "nodule.json").read_text())
    assert card["task"] == "nodule" and card["training"]["epochs_run"] == epochs
    assert (out / "nodule.safetensors").is_file()
    assert len((out / "history.jsonl").read_text().splitlines()) == epochs  # only rank 0 writes
