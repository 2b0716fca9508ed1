"""Property tests for topic matching: both twins against an oracle, compiled against pure.

The oracle below is written apart from the implementation: validity by regular expressions over
the whole string, matching by translating a filter into a regular expression. Filters and topics
are drawn from a small alphabet of levels ('a', 'b', '$x', '', '+', '#') so that collisions,
empty levels, '$' topics and wildcards in wrong places all come up often.
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqttd._pure._match as pure

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def m(match_twin: ModuleType) -> ModuleType:
    """This file's short name for ``match_twin`` (tests/unit/conftest.py)."""
    return match_twin


@pytest.fixture(scope="session")
def compiled(match_compiled: ModuleType) -> ModuleType:
    """This file's short name for ``match_compiled``: skipped under MQTTD_NO_EXTENSIONS=1, a
    failure when the compiled matcher should be there and is not."""
    return match_compiled


def test_compiled_module_loaded(compiled: ModuleType) -> None:
    """A build that silently fell back to pure Python must not pass unnoticed."""
    assert compiled.__file__ is not None and not compiled.__file__.endswith(".py")


# -- the oracle --------------------------------------------------------------------------------

_PLAIN = r"[^/+#]*"
_TOPIC_RE = re.compile(r"[^+#]+", re.S)
# levels of '+' or wildcard-free text, optionally closed by a lone '#' level
_FILTER_RE = re.compile(rf"(?:(?:{_PLAIN}|\+)/)*(?:{_PLAIN}|\+|#)", re.S)
_SHARED_RE = re.compile(r"\$share/([^/+#]+)/(.+)", re.S)


def _encodable(s: str) -> bool:
    try:
        return "\x00" not in s and len(s.encode("utf-8")) <= 65535
    except UnicodeEncodeError:
        return False


def oracle_topic_ok(t: str) -> bool:
    return _TOPIC_RE.fullmatch(t) is not None and _encodable(t)


def oracle_plain_filter_ok(f: str) -> bool:
    return f != "" and _FILTER_RE.fullmatch(f) is not None and _encodable(f)


def oracle_shared(f: str) -> tuple[str, str] | None | str:
    """(name, inner), None when not shared, or the string "bad"."""
    if not f.startswith("$share/"):
        return None
    mt = _SHARED_RE.fullmatch(f)
    if mt is None or "\x00" in mt.group(1) or not oracle_plain_filter_ok(mt.group(2)):
        return "bad"
    return mt.group(1), mt.group(2)


def oracle_filter_ok(f: str) -> bool:
    return oracle_plain_filter_ok(f) and oracle_shared(f) != "bad"


def oracle_matches(f: str, t: str) -> bool:
    if not oracle_filter_ok(f) or not oracle_topic_ok(t):
        return False
    shared = oracle_shared(f)
    if isinstance(shared, tuple):
        f = shared[1]
    if t.startswith("$") and f[:1] in ("+", "#"):
        return False
    levels = f.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels.pop()
    pattern = "/".join("[^/]*" if lv == "+" else re.escape(lv) for lv in levels)
    if multi:
        # '#' also matches the parent level: "a/#" matches "a" [MQTT-4.7.1-2]
        pattern = pattern + "(?:/.*)?" if levels else ".*"
    return re.fullmatch(pattern, t, re.S) is not None


# -- strategies --------------------------------------------------------------------------------

LEVELS = ["a", "b", "$x", "", "+", "#"]
level = st.sampled_from(LEVELS)
# any mix of levels: many of these are invalid ('#' in the middle) or not topic names
any_string = st.lists(level, min_size=1, max_size=5).map("/".join)
# a few odd characters glued on, for the validators
odd = st.one_of(
    any_string,
    st.tuples(any_string, st.sampled_from(["+", "#", "a+", "#b", "\x00", "é", "\ud800"])).map(
        "".join
    ),
    st.tuples(st.sampled_from(["$share/", "$share//", "$share/g/", "$share/g+/"]), any_string).map(
        "".join
    ),
)
topic_levels = st.sampled_from(["a", "b", "$x", ""])
topic = st.lists(topic_levels, min_size=1, max_size=5).map("/".join).filter(lambda t: t != "")


@st.composite
def valid_filter(draw: st.DrawFn) -> str:
    lv = draw(st.lists(st.sampled_from(["a", "b", "$x", "", "+"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        lv = [*lv[: draw(st.integers(0, len(lv) - 1))], "#"]
    return "/".join(lv) or "a"  # "" is the one string of these levels that is no filter


# -- validation and topic_matches against the oracle -------------------------------------------


@SETTINGS
@given(s=odd)
def test_validators_against_oracle(m: ModuleType, s: str) -> None:
    assert m.validate_topic(s) is oracle_topic_ok(s)
    assert m.validate_filter(s) is oracle_filter_ok(s)
    expected = oracle_shared(s)
    if expected == "bad":
        with pytest.raises(ValueError):
            m.parse_shared(s)
    else:
        assert m.parse_shared(s) == expected


@SETTINGS
@given(f=any_string, t=any_string)
def test_topic_matches_against_oracle(m: ModuleType, f: str, t: str) -> None:
    assert m.topic_matches(f, t) is oracle_matches(f, t)


@SETTINGS
@given(f=valid_filter(), t=topic)
def test_topic_matches_valid_pairs(m: ModuleType, f: str, t: str) -> None:
    # valid pairs only, so that the matching logic (not validation) is what gets exercised
    assert m.topic_matches(f, t) is oracle_matches(f, t)
    assert m.topic_matches("$share/grp/" + f, t) is oracle_matches(f, t)


# -- the tree against the oracle ---------------------------------------------------------------

ops = st.lists(
    st.tuples(st.booleans(), valid_filter(), st.integers(0, 3), st.integers(0, 9)), max_size=40
)


def _canon(dicts: list[dict]) -> list[list[tuple]]:
    return sorted(sorted(d.items(), key=repr) for d in dicts)


def _prefixes(filters: set[str]) -> int:
    return len({tuple(f.split("/")[:k]) for f in filters for k in range(1, len(f.split("/")) + 1)})


@SETTINGS
@given(ops=ops, topics=st.lists(topic, min_size=1, max_size=8))
def test_tree_against_oracle(m: ModuleType, ops: list, topics: list[str]) -> None:
    tree = m.SubscriptionTree()
    model: dict[str, dict[int, int]] = {}
    for is_add, f, key, value in ops:
        if is_add:
            new = key not in model.get(f, {})
            assert tree.add(f, key, value) is new
            model.setdefault(f, {})[key] = value
        else:
            present = key in model.get(f, {})
            assert tree.remove(f, key) is present
            if present:
                del model[f][key]
                if not model[f]:
                    del model[f]
        assert tree.get(f, key) == model.get(f, {}).get(key)
    assert len(tree) == sum(len(d) for d in model.values())
    assert tree.filter_count() == len(model)
    assert sorted(tree.filters()) == sorted(model)
    assert tree.node_count() == _prefixes(set(model))  # pruned: exactly the live prefixes
    for f in model:
        assert f in tree
    for t in topics:
        expected = [d for f, d in model.items() if oracle_matches(f, t)]
        assert _canon(tree.collect(t)) == _canon(expected)
        merged: dict[int, list[int]] = {}
        for d in expected:
            for k, v in d.items():
                merged.setdefault(k, []).append(v)
        got = tree.match(t)
        assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in merged.items()}
    # removing everything leaves no node behind
    for f, d in list(model.items()):
        for key in list(d):
            assert tree.remove(f, key) is True
    assert len(tree) == 0 and tree.filter_count() == 0 and tree.node_count() == 0
    assert list(tree.filters()) == []


# -- compiled against pure ---------------------------------------------------------------------


@SETTINGS
@given(
    ops=st.lists(
        st.tuples(st.booleans(), valid_filter(), st.integers(0, 3), st.integers(0, 9)),
        max_size=60,
    ),
    topics=st.lists(topic, min_size=1, max_size=8),
    probes=st.lists(odd, max_size=5),
)
def test_compiled_agrees_with_pure(
    compiled: ModuleType, ops: list, topics: list[str], probes: list[str]
) -> None:
    trees = (pure.SubscriptionTree(), compiled.SubscriptionTree())
    for is_add, f, key, value in ops:
        if is_add:
            r = [t.add(f, key, value) for t in trees]
        else:
            r = [t.remove(f, key) for t in trees]
        assert r[0] == r[1]
        sizes = [(len(t), t.filter_count(), t.node_count()) for t in trees]
        assert sizes[0] == sizes[1]
    assert sorted(trees[0].filters()) == sorted(trees[1].filters())
    for t in topics:
        # the same walk in both twins: even the order agrees
        assert trees[0].collect(t) == trees[1].collect(t)
        assert trees[0].match(t) == trees[1].match(t)
    for s in probes:
        for name in ("validate_topic", "validate_filter"):
            assert getattr(pure, name)(s) is getattr(compiled, name)(s)
        try:
            expected = pure.parse_shared(s)
        except ValueError:
            with pytest.raises(ValueError):
                compiled.parse_shared(s)
        else:
            assert compiled.parse_shared(s) == expected
        for t in topics:
            assert pure.topic_matches(s, t) is compiled.topic_matches(s, t)
        for t in trees:
            assert (s in t) is (s in trees[0])
            assert t.get(s, 0) == trees[0].get(s, 0)
