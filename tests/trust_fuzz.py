"""A seeded mutation fuzzer over the files bnnkit reads: packed manifests (graph and input spec
included), run configs, run manifests, checkpoint headers and metrics files.

Each case takes a valid file, applies one to three mutations at random places (every field and
key can be hit): type swaps, huge and negative numbers, non-finite numbers, hostile and long
strings carrying a marker-file payload, deep nesting, deleted and unknown fields, repeated list
items. The reader must then give a one-line refusal (an ``ArtifactError`` / ``ValueError``
whose message is one line) or a result that works (a loaded packed model runs on an input of
its shape, or refuses that in one line), never another exception, never the marker file, never
a hang (a watchdog per case) and never unbounded memory (the peak RSS growth is reported).

Run by tests/test_trust_fuzz.py in a subprocess for a fixed number of cases; more with
``BNNKIT_FUZZ_CASES`` (and another seed with ``BNNKIT_FUZZ_SEED``)::

    python tests/trust_fuzz.py --cases 5000 --seed 3 --workdir /tmp/fuzz
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hostile import hostile_strings, reseal_run, small_model  # noqa: E402

DEEP = "\x00DEEP\x00"  # replaced in the JSON text by a nest too deep for Python's recursion


class CaseHang(Exception):
    pass


def _random_place(doc, rng: random.Random):
    """A random place of a JSON document, by a random walk from the root (every value and key
    can be reached; nothing is enumerated, so a document of many shared items costs nothing):
    ``(path, "value")`` or ``(path, "key")`` for an object key."""
    path, value = (), doc
    while isinstance(value, (list, dict)) and value and rng.random() < 0.8:
        if isinstance(value, list):
            i = rng.randrange(len(value))
            path, value = path + (i,), value[i]
        else:
            k = rng.choice(list(value))
            if rng.random() < 0.15:
                return path + (k,), "key"
            path, value = path + (k,), value[k]
    return path, "value"


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _replacements(rng: random.Random, marker: str, old):
    kind = rng.choice(["type", "number", "string", "nest", "repeat"])
    if kind == "type":
        return rng.choice([0, -1, 1.5, True, False, None, "x", [], {}, [1, 2], {"a": 1}, {"node": 0},
                           {"tuple": [1]}, {"float": "nan"}, {"dtype": "float32"}])
    if kind == "number":
        return rng.choice([10**18, -10**18, 2**63, 2**64, 10**400, -10**400, 1e308, -1e308, float("nan"),
                           float("inf"), float("-inf"), -1, 0, 2**31, 1e-300])
    if kind == "string":
        return rng.choice(hostile_strings(marker))
    if kind == "nest":
        return rng.choice([DEEP, json.loads("[" * 60 + "1" + "]" * 60), {"a": {"b": {"c": {"d": {"e": [old]}}}}}])
    # repeated items, up to a few MB of JSON (the readers' size bounds are tested on their own;
    # a giant document would only measure this harness's memory)
    factor = max(2, min(rng.choice([2, 100, 5000]), (4 << 20) // max(len(json.dumps(old)), 1)))
    repeated = old * factor if isinstance(old, (list, str)) and old else [old] * factor
    return json.loads(json.dumps(repeated))  # copies, not shared references a later mutation would multiply


def mutate(doc, rng: random.Random, marker: str):
    """A mutated deep copy of ``doc`` and a description of what was done."""
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        path, kind = _random_place(doc, rng)
        if kind == "key":
            parent = _get(doc, path[:-1])
            action = rng.choice(["rename", "delete"])
            if action == "delete":
                del parent[path[-1]]
                done.append(f"delete {list(path)}")
            else:
                new = rng.choice(hostile_strings(marker) + ["", "unknown_field", "version", "node"])
                items = list(parent.items())
                parent.clear()
                parent.update({(new if k == path[-1] else k): v for k, v in items})
                done.append(f"rename key {list(path)} to {new[:40]!r}")
            continue
        new = _replacements(rng, marker, _get(doc, path) if path else doc)
        if not path:
            doc = new
        else:
            parent = _get(doc, path[:-1])
            parent[path[-1]] = new
        if isinstance(_get(doc, path[:-1]) if path else None, dict) and rng.random() < 0.2:
            _get(doc, path[:-1])["unknown_" + str(rng.randrange(10))] = new
        done.append(f"set {list(path)} to {repr(new)[:60]}")
    return doc, "; ".join(done)


def dumps(doc) -> str:
    text = json.dumps(doc)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)


# --- the corpora: one valid file of each kind ------------------------------------------------

def build_corpora(workdir: str) -> dict:
    import torch

    from bnnkit.cli import main
    from bnnkit.export import pack
    from bnnkit.inputs import InputSpec

    torch.manual_seed(0)
    packed = os.path.join(workdir, "packed")
    spec = InputSpec((1, 8, 8), value_range=(0, 16), scale=0.125, offset=-1.0, resize=8,
                     class_names=tuple("0123456789"), statistics=((4.9,), (0.5,)))
    pack(small_model().eval(), input_shape=(1, 8, 8), input_spec=spec).save(packed)
    run = os.path.join(workdir, "run")
    with open(os.devnull, "w") as null:
        stdout, sys.stdout = sys.stdout, null
        try:
            assert main(["train", "--out", run, "--model", "digits_cnn", "--model-arg", "channels=4", "--dataset",
                         "synthetic", "--epochs", "2", "--batch-size", "64", "--no-progress"]) == 0
        finally:
            sys.stdout = stdout
    read = lambda path: json.load(open(path))  # noqa: E731
    from safetensors import safe_open

    with safe_open(os.path.join(run, "checkpoint.safetensors"), framework="pt") as f:
        header = json.loads(f.metadata()["bnnkit_checkpoint"])
    return {"packed": read(os.path.join(packed, "manifest.json")), "run config": read(os.path.join(run, "config.json")),
            "run manifest": read(os.path.join(run, "run-manifest.json")), "checkpoint": header,
            "metrics": [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))],
            "dirs": {"packed": packed, "run": run}}


# --- one case --------------------------------------------------------------------------------

def prepare_case(target: str, doc, corpora: dict, scratch: str) -> None:
    """Write ``doc`` as the ``target`` file into a fresh copy of its directory (the harness's
    part, with the checksums an attacker would recompute)."""
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    shutil.copytree(corpora["dirs"]["packed" if target == "packed" else "run"], scratch)
    text = dumps(doc)
    if target == "packed":
        with open(os.path.join(scratch, "manifest.json"), "w") as f:
            f.write(text)
    elif target in ("run config", "run manifest"):
        name = "config.json" if target == "run config" else "run-manifest.json"
        with open(os.path.join(scratch, name), "w") as f:
            f.write(text)
        if target == "run config":
            reseal_run(scratch, "config.json")
    elif target == "checkpoint":
        _write_raw_header(os.path.join(scratch, "checkpoint.safetensors"), text)
    else:
        rows = doc if isinstance(doc, list) else [doc]
        with open(os.path.join(scratch, "metrics.jsonl"), "w") as f:
            f.write("".join(dumps(r) + "\n" for r in rows))


def read_case(target: str, scratch: str) -> str:
    """Read the prepared file as bnnkit does: "refused" (one line) or "ran"; raises anything else."""
    import torch

    from bnnkit.artifacts import ArtifactError

    try:
        if target == "packed":
            from bnnkit.export import load
            from bnnkit.export.runtime.sizes import packed_artifact_report

            model = load(scratch)
            try:
                out = model(torch.randn(2, 1, 8, 8))
                assert out is not None
            except ArtifactError as e:
                _one_line(e)
            packed_artifact_report(scratch)
        elif target in ("run config", "run manifest"):
            from bnnkit.train import load_run

            load_run(scratch)
        elif target == "checkpoint":
            from bnnkit import models
            from bnnkit.train.checkpoint import checkpoint_options, read_checkpoint

            path = os.path.join(scratch, "checkpoint.safetensors")
            model = models.create("digits_cnn", channels=4, num_classes=10)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            checkpoint_options(path)
            read_checkpoint(path, model, optimizer)
        else:
            from bnnkit.plot import read_metrics

            read_metrics(scratch)
    except ValueError as e:  # ArtifactError is a ValueError: a refusal, which must be one line
        _one_line(e)
        return "refused"
    return "ran"


def _write_raw_header(path: str, text: str) -> None:
    """The checkpoint ``path`` with the header text ``text``, its sha256 recomputed."""
    from bnnkit.artifacts import read_tensors, tensor_bytes
    from bnnkit.train.checkpoint import _DIGEST_KEY, _HEADER_KEY, _tensor_digest

    tensors = read_tensors(path)
    with open(path, "wb") as f:
        f.write(tensor_bytes(tensors, {_HEADER_KEY: text, _DIGEST_KEY: _tensor_digest(tensors, text)}))


def _one_line(e: Exception) -> None:
    if "\n" in str(e):
        raise AssertionError(f"a refusal of more than one line: {str(e)[:500]!r}")


# --- the loop --------------------------------------------------------------------------------

def fuzz(cases: int, seed: int, workdir: str, case_seconds: float = 60.0, only: int | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    os.makedirs(workdir, exist_ok=True)
    corpora = build_corpora(workdir)
    marker = os.path.join(workdir, "payload-ran")
    rng = random.Random(seed)
    targets = ["packed", "packed", "packed", "run config", "run manifest", "checkpoint", "metrics"]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"refused": 0, "ran": 0}
    failures, slowest, heaviest = [], 0.0, []

    def alarm(signum, frame):
        raise CaseHang(f"a case ran past {case_seconds} s")

    signal.signal(signal.SIGALRM, alarm)
    skipped, max_growth = 0, 0.0
    for i in range(cases):
        target = targets[i % len(targets)]
        doc, what = mutate(corpora[target], rng, marker)
        if only is not None and i != only:
            continue
        scratch = os.path.join(workdir, "case")
        try:
            prepare_case(target, doc, corpora, scratch)
        except Exception:  # the harness cannot write this document (e.g. a header safetensors refuses)
            skipped += 1
            continue
        started = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        signal.setitimer(signal.ITIMER_REAL, case_seconds)
        try:
            outcomes[read_case(target, scratch)] += 1
        except BaseException as e:  # anything but a one-line refusal or a result is a failure
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append({"case": i, "target": target, "mutation": what, "error": f"{type(e).__name__}: "
                             f"{str(e)[:300]}", "where": traceback.format_exc().strip().splitlines()[-3:]})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - started)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
        max_growth = max(max_growth, grew)
        if grew > 20:
            heaviest.append((round(grew), target, what[:120]))
        if os.path.exists(marker):
            failures.append({"case": i, "target": target, "mutation": what, "error": "the payload ran"})
            os.remove(marker)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"cases": cases, "seed": seed, **outcomes, "skipped": skipped, "failures": failures,
            "slowest_case_s": slowest, "peak_rss_growth_mb": growth,
            "max_case_growth_mb": max_growth, "heaviest_cases": sorted(heaviest, reverse=True)[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=int(os.environ.get("BNNKIT_FUZZ_CASES", "300")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("BNNKIT_FUZZ_SEED", "0")))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only", type=int, default=None, help="run only this case (to reproduce a failure)")
    args = parser.parse_args()
    print(json.dumps(fuzz(args.cases, args.seed, args.workdir, only=args.only)))


if __name__ == "__main__":
    main()
