"""Micro-benchmark of the subscription tree: compiled ``mqttd._match`` against the pure twin.

A tree of 10,000 distinct random filters of 3-5 levels (10 % with one '+' level, 5 % ending in
'#'), one subscriber each, built from a fixed seed. Each round matches the same batch of 1,000
topic names: half are drawn from the filters (so they match at least one), half at random from
the same vocabulary. The per-match figure is the batch median divided by the batch size.

Run: ``python -m pytest benchmarks/bench_match.py --benchmark-only -q``
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType

import pytest

import mqttd._pure._match as pure

try:
    compiled: ModuleType | None = importlib.import_module("mqttd._match")
except ImportError:
    compiled = None

SEED = 20240611
N_FILTERS = 10_000
N_TOPICS = 1_000
# words per level: a few top-level "sites", more devices and readings below
VOCAB = [
    [f"site{i}" for i in range(8)],
    [f"bldg{i}" for i in range(25)],
    [f"dev{i}" for i in range(60)],
    [f"sensor{i}" for i in range(40)],
    [f"field{i}" for i in range(20)],
]


def make_filters(rng: random.Random) -> list[str]:
    filters: set[str] = set()
    while len(filters) < N_FILTERS:
        depth = rng.randint(3, 5)
        levels = [rng.choice(VOCAB[d]) for d in range(depth)]
        r = rng.random()
        if r < 0.10:
            levels[rng.randrange(depth)] = "+"
        elif r < 0.15:
            levels[-1] = "#"
        filters.add("/".join(levels))
    return sorted(filters)


def make_topics(rng: random.Random, filters: list[str]) -> list[str]:
    topics = []
    for n in range(N_TOPICS):
        if n % 2 == 0:  # a concrete topic of a random filter
            levels = []
            for d, lv in enumerate(rng.choice(filters).split("/")):
                if lv == "+":
                    levels.append(rng.choice(VOCAB[d]))
                elif lv == "#":
                    levels.extend(rng.choice(VOCAB[e]) for e in range(d, rng.randint(d, 5)))
                else:
                    levels.append(lv)
            topics.append("/".join(levels) or VOCAB[0][0])
        else:
            depth = rng.randint(3, 5)
            topics.append("/".join(rng.choice(VOCAB[d]) for d in range(depth)))
    return topics


@pytest.fixture(scope="module")
def workload() -> tuple[list[str], list[str]]:
    rng = random.Random(SEED)
    filters = make_filters(rng)
    return filters, make_topics(rng, filters)


def _impl(name: str) -> ModuleType:
    if name == "compiled":
        if compiled is None:
            pytest.skip("mqttd._match not built")
        return compiled
    return pure


def _tree(mod: ModuleType, filters: list[str]):
    tree = mod.SubscriptionTree()
    for i, f in enumerate(filters):
        tree.add(f, f"client{i}", 1)
    return tree


def _report(benchmark, label: str, n: int, matched: int, capsys) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    per = stats.stats.median / n * 1e6
    benchmark.extra_info["per_match_us"] = round(per, 4)
    benchmark.extra_info["filters_matched_per_topic"] = round(matched / n, 2)
    with capsys.disabled():
        print(f"\n{label}: median {per:.3f} us per match ({matched / n:.2f} filters matched/topic)")


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_collect(benchmark, workload, impl: str, capsys) -> None:
    mod = _impl(impl)
    filters, topics = workload
    tree = _tree(mod, filters)
    collect = tree.collect

    def run() -> int:
        n = 0
        for t in topics:
            n += len(collect(t))
        return n

    matched = benchmark(run)
    assert matched >= N_TOPICS // 2  # every topic drawn from a filter matches it
    _report(benchmark, f"collect {impl}", len(topics), matched, capsys)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_match(benchmark, workload, impl: str, capsys) -> None:
    mod = _impl(impl)
    filters, topics = workload
    tree = _tree(mod, filters)
    match = tree.match

    def run() -> int:
        n = 0
        for t in topics:
            n += len(match(t))
        return n

    matched = benchmark(run)
    _report(benchmark, f"match {impl}", len(topics), matched, capsys)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_validate_topic(benchmark, workload, impl: str, capsys) -> None:
    mod = _impl(impl)
    _, topics = workload
    validate = mod.validate_topic

    def run() -> int:
        return sum(1 for t in topics if validate(t))

    assert benchmark(run) == len(topics)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        with capsys.disabled():
            print(
                f"\nvalidate_topic {impl}: median {stats.stats.median / len(topics) * 1e6:.3f} us"
            )
