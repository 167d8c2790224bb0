#!/usr/bin/env python3
"""Provision the ONNX Runtime shared library for one Rust target from the official PyPI wheel.

Reads the pinned wheel name and sha256 from cross/onnxruntime.lock, fetches the wheel with pip (or takes a local
copy named by OUTPOST_ORT_WHEEL), checks its sha256, and extracts libonnxruntime.so.* into DEST atomically.
Idempotent: a DEST that already holds the library with a matching stamp is left alone.

Usage: provision_ort.py --target x86_64-unknown-linux-gnu --dest DIR
"""

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent


def read_lock(target):
    version = None
    for raw in (HERE / "onnxruntime.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if fields[0] == "version":
            version = fields[1]
        elif fields[0] == target:
            if len(fields) != 4:
                sys.exit(f"onnxruntime.lock: malformed line for {target}: {raw!r}")
            return version, fields[1], fields[2], fields[3]
    sys.exit(f"onnxruntime.lock: no ONNX Runtime wheel is pinned for target {target}")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(version, platform, wheel, workdir):
    local = os.environ.get("OUTPOST_ORT_WHEEL")
    if local:
        return pathlib.Path(local)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--platform", platform, "--python-version", "3.11", "--implementation", "cp",
        f"onnxruntime=={version}", "-d", str(workdir),
    ]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        sys.exit(f"pip download of onnxruntime=={version} for {platform} failed:\n{result.stdout}")
    path = pathlib.Path(workdir) / wheel
    if not path.exists():
        sys.exit(f"pip did not produce the pinned wheel {wheel}; got {sorted(os.listdir(workdir))}")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--dest", required=True, type=pathlib.Path)
    args = parser.parse_args()

    version, platform, wheel, expected = read_lock(args.target)
    lib_name = f"libonnxruntime.so.{version}"
    stamp = args.dest / ".provisioned"
    if (args.dest / lib_name).exists() and stamp.exists() and stamp.read_text().strip() == expected:
        print(args.dest / lib_name)
        return

    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dest) as tmp:
        path = fetch_wheel(version, platform, wheel, tmp)
        actual = sha256(path)
        if actual != expected:
            sys.exit(f"sha256 mismatch for {path}: expected {expected}, got {actual}; refusing to use it")
        with zipfile.ZipFile(path) as archive:
            member = f"onnxruntime/capi/{lib_name}"
            staged = pathlib.Path(tmp) / lib_name
            with archive.open(member) as src, open(staged, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.chmod(staged, 0o755)
        os.replace(staged, args.dest / lib_name)
        link = args.dest / "libonnxruntime.so"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(lib_name)
        stamp.write_text(expected + "\n")
    print(args.dest / lib_name)


if __name__ == "__main__":
    main()
