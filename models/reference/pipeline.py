#!/usr/bin/env python3
"""A plain onnxruntime + OpenCV pipeline: the yardstick the agent's bench measures itself against.

For each JPEG in a folder, one frame after the other, as a straightforward Python deployment would do it:
read the file, cv2.imdecode, preprocess like Ultralytics (letterbox for detectors, resize + centre crop for
classifiers), session.run, decode (boxes + class-aware NMS, or top-5), one JSON line per frame. Nothing is threaded
by hand; ONNX Runtime uses the given number of intra-op threads and its own defaults otherwise.

Afterwards it times the bare session.run over the same preprocessed inputs, and prints a summary as one JSON line
on stderr: frames/s end to end, bare run ms, and the process's peak RSS.

    python3 models/reference/pipeline.py MODEL.onnx FOLDER --threads 2 [--out frames.jsonl]
"""

import argparse
import ast
import json
import os
import resource
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

CONF, IOU, MAX_DET, TOP_K = 0.25, 0.7, 300, 5


def letterbox(img, size, pad=114):
    """Ultralytics LetterBox: keep the aspect ratio, centre, pad with grey."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = round(w * r), round(h * r)
    if (w, h) != (new_w, new_h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad, pad, pad))
    return img, r, left, top


def resize_crop(img, size):
    """Ultralytics classify transforms: shortest side to `size` (antialiased), centre crop."""
    h, w = img.shape[:2]
    r = size / min(h, w)
    img = cv2.resize(img, (max(size, round(w * r)), max(size, round(h * r))), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def to_tensor(img):
    """BGR HWC uint8 -> RGB NCHW float32 in [0, 1]."""
    return np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def decode_boxes(out, gain, left, top, width, height):
    """YOLO [1, 4 + classes, anchors] -> class-aware NMS -> boxes in original pixels."""
    pred = out[0].T
    scores = pred[:, 4:]
    cls, conf = scores.argmax(1), scores.max(1)
    keep = conf > CONF
    pred, cls, conf = pred[keep], cls[keep], conf[keep]
    if not len(pred):
        return []
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], 1)
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cls.tolist(), CONF, IOU)
    dets = []
    for i in np.asarray(idx).reshape(-1)[:MAX_DET]:
        x1 = float(np.clip((xywh[i, 0] - left) / gain, 0, width))
        y1 = float(np.clip((xywh[i, 1] - top) / gain, 0, height))
        x2 = float(np.clip((xywh[i, 0] + xywh[i, 2] - left) / gain, 0, width))
        y2 = float(np.clip((xywh[i, 1] + xywh[i, 3] - top) / gain, 0, height))
        dets.append({"class": int(cls[i]), "score": float(conf[i]), "box": [x1, y1, x2, y2]})
    return dets


def top_k(out):
    p = out[0].astype(np.float64)
    if not (np.all(p >= 0) and abs(p.sum() - 1) < 1e-3):
        p = np.exp(p - p.max())
        p /= p.sum()
    best = np.argsort(-p)[:TOP_K]
    return [{"class": int(c), "score": float(p[c])} for c in best]


def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's choice)")
    ap.add_argument("--out", default="-", help="where the per-frame JSON lines go (default stdout)")
    ap.add_argument("--bare-runs", type=int, default=50)
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    size = inp.shape[2]
    meta = session.get_modelmeta().custom_metadata_map
    task = meta.get("task") or ("classify" if len(session.get_outputs()[0].shape) == 2 else "detect")
    names = ast.literal_eval(meta["names"]) if "names" in meta else {}
    files = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder) if f.lower().endswith((".jpg", ".jpeg")))
    out = sys.stdout if args.out == "-" else open(args.out, "w")

    session.run(None, {inp.name: np.zeros((1, 3, size, size), np.float32)})  # warm-up, not timed
    rss_loaded = rss_kib()

    inputs = []
    start = time.perf_counter()
    for path in files:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        height, width = img.shape[:2]
        if task == "classify":
            x = to_tensor(resize_crop(img, size))
        else:
            boxed, gain, left, top = letterbox(img, size)
            x = to_tensor(boxed)
        y = session.run(None, {inp.name: x})[0]
        if task == "classify":
            result = {"classes": [dict(c, label=names.get(c["class"], str(c["class"]))) for c in top_k(y)]}
        else:
            dets = decode_boxes(y, gain, left, top, width, height)
            result = {"detections": [dict(d, label=names.get(d["class"], str(d["class"]))) for d in dets]}
        out.write(json.dumps({"file": os.path.basename(path), "width": width, "height": height, **result}) + "\n")
        if len(inputs) < 8:
            inputs.append(x)
    elapsed = time.perf_counter() - start
    out.flush()

    runs = []
    for i in range(args.bare_runs):
        t = time.perf_counter()
        session.run(None, {inp.name: inputs[i % len(inputs)]})
        runs.append((time.perf_counter() - t) * 1000)
    runs.sort()

    summary = {
        "task": task,
        "frames": len(files),
        "seconds": elapsed,
        "fps": len(files) / elapsed,
        "bare_run_ms_median": runs[len(runs) // 2],
        "bare_run_ms_mean": sum(runs) / len(runs),
        "threads": args.threads,
        "rss_loaded_kib": rss_loaded,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
    }
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
