"""Topic validation, matching and the subscription tree, on both twins.

Cases come from MQTT 3.1.1 §4.7 / MQTT 5.0 §4.7 (the non-normative examples and the normative
rules cited per test) and §4.8.2 (shared subscriptions). Every test runs against the pure twin
``mqttd._pure._match`` and the compiled ``mqttd._match`` (``match_twin``, tests/unit/conftest.py:
the compiled run fails when the extension should be there and is not).
"""

from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def m(match_twin: ModuleType) -> ModuleType:
    """This file's short name for ``match_twin`` (tests/unit/conftest.py)."""
    return match_twin


# -- validate_topic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "sport/tennis/player1",
        "/",
        "//",
        "/finance",
        "finance/",
        "$SYS/broker/load",
        "$share/g/x",  # a topic name may look like anything without wildcards
        "a b/c d",
        "héllo/wörld/日本",
        "\U0001f600/emoji",
        "x" * 65535,
        "é" * 32767,  # 65534 bytes
    ],
)
def test_validate_topic_accepts(m: ModuleType, topic: str) -> None:
    assert m.validate_topic(topic) is True


@pytest.mark.parametrize(
    "topic",
    [
        "",  # [MQTT-4.7.3-1]
        "+",  # [MQTT-3.3.2-2]
        "#",
        "a/+",
        "a/#",
        "a+b",
        "sport/tennis#",
        "a\x00b",  # [MQTT-4.7.3-2]
        "\x00",
        "x" * 65536,  # [MQTT-4.7.3-3]
        "é" * 32768,  # 65536 bytes although only 32768 characters
        "\U0001f600" * 16384,  # 65536 bytes
        "a\ud800b",  # lone surrogate: not well-formed UTF-8 [MQTT-1.5.4-1]
    ],
)
def test_validate_topic_rejects(m: ModuleType, topic: str) -> None:
    assert m.validate_topic(topic) is False


def test_validate_topic_type(m: ModuleType) -> None:
    with pytest.raises(TypeError):
        m.validate_topic(b"a/b")
    with pytest.raises(TypeError):
        m.validate_topic(None)


# -- validate_filter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flt",
    [
        "a",
        "#",
        "+",
        "+/+",
        "/+",
        "+/",
        "sport/tennis/player1/#",
        "sport/tennis/#",
        "sport/+/player1",
        "+/tennis/#",
        "/",
        "//",
        "$SYS/#",
        "$SYS/+/x",
        "$share",  # not the shared form: the prefix is "$share/"
        "$sharex/a",
        "$share/g/a/b",
        "$share/g/#",
        "$share/g/+/x",
        "$share/g//",  # inner filter "/" is valid
        "$share/g/$share/h/x",  # the inner filter is read literally
        "x" * 65535,
    ],
)
def test_validate_filter_accepts(m: ModuleType, flt: str) -> None:
    assert m.validate_filter(flt) is True


@pytest.mark.parametrize(
    "flt",
    [
        "",  # [MQTT-4.7.3-1]
        "a/#/b",  # '#' only last [MQTT-4.7.1-2]
        "#/a",
        "##",
        "a#",
        "#a",
        "sport/tennis#",
        "a/b#/c",
        "a+",  # '+' alone in its level [MQTT-4.7.1-3]
        "+a",
        "sport+",
        "a/++/b",
        "a/+b/c",
        "+#",
        "a\x00",  # [MQTT-4.7.3-2]
        "x" * 65536,  # [MQTT-4.7.3-3]
        "a/\udfff",  # [MQTT-1.5.4-1]
        "$share/",  # shared forms that parse_shared rejects [MQTT-4.8.2-1][MQTT-4.8.2-2]
        "$share//a",
        "$share/g",
        "$share/g/",
        "$share/g+/a",
        "$share/#/a",
        "$share/g/a/#/b",
        "$share/g/a+",
    ],
)
def test_validate_filter_rejects(m: ModuleType, flt: str) -> None:
    assert m.validate_filter(flt) is False


# -- parse_shared ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flt, expected",
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),
        ("$share/g//a", ("g", "/a")),
        ("$share/g/$SYS/#", ("g", "$SYS/#")),
        ("$share/a$b/x", ("a$b", "x")),
        ("a/b", None),
        ("#", None),
        ("$share", None),
        ("$SHARE/g/a", None),  # the prefix is case-sensitive
        ("$sharex/g/a", None),
        ("share/g/a", None),
    ],
)
def test_parse_shared(m: ModuleType, flt: str, expected: tuple[str, str] | None) -> None:
    assert m.parse_shared(flt) == expected


@pytest.mark.parametrize(
    "flt",
    [
        "$share/",  # empty share name [MQTT-4.8.2-1]
        "$share//a",
        "$share//",
        "$share/g",  # no '/' and filter after the share name [MQTT-4.8.2-2]
        "$share/g/",  # empty filter
        "$share/g+/a",  # share name with '+' or '#' [MQTT-4.8.2-2]
        "$share/+/a",
        "$share/#/a",
        "$share/g#/a",
        "$share/g/a/#/b",  # invalid inner filter
        "$share/g/a#",
        "$share/g/+a",
        "$share/g\x00/a",
    ],
)
def test_parse_shared_rejects(m: ModuleType, flt: str) -> None:
    with pytest.raises(ValueError):
        m.parse_shared(flt)


# -- topic_matches --------------------------------------------------------------------------

MATCHES = [
    # MQTT §4.7.1.2: "sport/tennis/player1/#"
    ("sport/tennis/player1/#", "sport/tennis/player1", True),  # the parent [MQTT-4.7.1-2]
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    ("#", "a", True),
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("/#", "/", True),
    ("/#", "/a/b", True),
    ("/#", "a", False),
    # §4.7.1.3: "+"
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # '+' matches an empty level
    ("+", "a", True),
    ("+", "/", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/+", "/", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/tennis/#", "sport/tennis/x/y", True),
    ("+/tennis/#", "sport/golf", False),
    ("+/#", "a", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport//player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    # literal levels, empty levels are real levels
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a/b", "a//b", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("/", "/", True),
    ("a", "A", False),  # case-sensitive [MQTT-4.7.3-4]
    ("a b", "a b", True),
    ("日本/+", "日本/東京", True),
    # §4.7.2: topics starting with '$' [MQTT-4.7.2-1]
    ("#", "$SYS/broker", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+/Clients", "$SYS/monitor/Clients", True),
    ("a/+", "a/$b", True),  # only the first level is special
    ("a/#", "a/$b", True),
    ("+/+", "a$/b", True),
    # shared subscriptions match with their inner filter
    ("$share/g/sport/#", "sport/tennis", True),
    ("$share/g/sport/#", "$share/g/sport", False),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/$SYS/#", "$SYS/x", True),
    # invalid filters or topic names match nothing
    ("a/#/b", "a/x/b", False),
    ("a+", "a+", False),
    ("#a", "#a", False),
    ("", "", False),
    ("a/+", "a/+", False),
    ("#", "a/#", False),
    ("$share/g", "$share/g", False),
    ("a\x00", "a\x00", False),
]


@pytest.mark.parametrize("flt, topic, expected", MATCHES)
def test_topic_matches(m: ModuleType, flt: str, topic: str, expected: bool) -> None:
    assert m.topic_matches(flt, topic) is expected


@pytest.mark.parametrize("flt, topic, expected", MATCHES)
def test_tree_agrees_with_topic_matches(
    m: ModuleType, flt: str, topic: str, expected: bool
) -> None:
    if not m.validate_topic(topic) or not m.validate_filter(flt):
        return
    shared = m.parse_shared(flt)
    tree = m.SubscriptionTree()
    tree.add(shared[1] if shared else flt, "k", 1)
    assert (tree.match(topic) == {"k": [1]}) is expected
    assert (len(tree.collect(topic)) == 1) is expected


# -- SubscriptionTree -----------------------------------------------------------------------


def test_tree_add_replace_get(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    assert len(tree) == 0 and tree.filter_count() == 0 and tree.node_count() == 0
    assert tree.add("sport/tennis/+", "c1", 1) is True
    assert tree.add("sport/tennis/+", "c1", 2) is False  # replaced
    assert tree.get("sport/tennis/+", "c1") == 2
    assert tree.get("sport/tennis/+", "c2") is None
    assert tree.get("sport/tennis/+", "c2", "dflt") == "dflt"
    assert tree.get("sport/tennis", "c1", 0) == 0
    assert tree.get("nothing/here", "c1") is None
    assert tree.add("sport/tennis/+", "c2", 3) is True
    assert len(tree) == 2 and tree.filter_count() == 1 and tree.node_count() == 3
    assert "sport/tennis/+" in tree
    assert "sport/tennis" not in tree  # a node on the path, without subscribers
    assert "sport/tennis/#" not in tree
    assert 42 not in tree


def test_tree_keys_of_any_hashable_type(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    k1, k2 = object(), ("client", 7)
    tree.add("a", k1, "v1")
    tree.add("a", k2, "v2")
    assert tree.match("a") == {k1: ["v1"], k2: ["v2"]}
    with pytest.raises(TypeError):
        tree.add("a", [], 1)  # unhashable
    with pytest.raises(TypeError):
        tree.add("b/#", {}, 1)  # and nothing is left behind for it
    assert len(tree) == 2 and tree.filter_count() == 1 and tree.node_count() == 1
    assert list(tree.filters()) == ["a"]


def test_tree_collect_returns_the_stored_dicts(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("a/b", "c1", 1)
    first = tree.collect("a/b")
    second = tree.collect("a/b")
    assert first == [{"c1": 1}]
    assert first[0] is second[0]  # no copies on the hot path
    assert tree.collect("a/c") == []


def test_tree_overlapping_subscriptions(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("sport/#", "c1", "q0")
    tree.add("sport/tennis/+", "c1", "q1")
    tree.add("sport/tennis/player1", "c1", "q2")
    tree.add("sport/tennis/player1", "c2", "q0")
    tree.add("#", "c3", "all")
    tree.add("+/+/+", "c4", "three")
    tree.add("$SYS/#", "c5", "sys")
    got = tree.match("sport/tennis/player1")
    assert sorted(got["c1"]) == ["q0", "q1", "q2"]
    assert got["c2"] == ["q0"] and got["c3"] == ["all"] and got["c4"] == ["three"]
    assert "c5" not in got
    assert len(tree.collect("sport/tennis/player1")) == 5
    assert tree.match("$SYS/broker/load") == {"c5": ["sys"]}  # [MQTT-4.7.2-1]
    assert tree.match("sport") == {"c1": ["q0"], "c3": ["all"]}  # "sport/#" matches "sport"
    assert tree.match("other") == {"c3": ["all"]}


def test_tree_empty_levels(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("+/+", "a", 1)
    tree.add("/+", "b", 1)
    tree.add("+", "c", 1)
    tree.add("/", "d", 1)
    tree.add("//", "e", 1)
    assert sorted(tree.match("/finance")) == ["a", "b"]
    assert sorted(tree.match("/")) == ["a", "b", "d"]
    assert sorted(tree.match("//")) == ["e"]
    assert sorted(tree.match("finance")) == ["c"]
    assert sorted(tree.filters()) == sorted(["+/+", "/+", "+", "/", "//"])


def test_tree_rejects_invalid_filters(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    for bad in ["", "a/#/b", "a+", "#a", "a\x00"]:
        with pytest.raises(ValueError):
            tree.add(bad, "k", 1)
    with pytest.raises(TypeError):
        tree.add(b"a", "k", 1)
    assert len(tree) == 0 and tree.node_count() == 0


def test_tree_remove_prunes(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("a/b/c/d", "k1", 1)
    assert tree.node_count() == 4
    tree.add("a/b/x", "k1", 1)
    assert tree.node_count() == 5
    tree.add("a/+/#", "k2", 1)
    assert tree.node_count() == 7
    tree.add("a/b", "k3", 1)
    assert tree.node_count() == 7 and tree.filter_count() == 4 and len(tree) == 4

    assert tree.remove("a/b/c/d", "nobody") is False
    assert tree.remove("a/b/c", "k1") is False  # a node on the path, not a filter
    assert tree.remove("a/b/c/d/e", "k1") is False
    assert tree.remove("z", "k1") is False
    assert tree.node_count() == 7

    assert tree.remove("a/b/c/d", "k1") is True
    assert tree.node_count() == 5  # "c" and "d" are freed
    assert tree.remove("a/b/c/d", "k1") is False
    assert tree.remove("a/+/#", "k2") is True
    assert tree.node_count() == 3  # "+" and "#" freed, "a" kept for "a/b"
    assert tree.remove("a/b", "k3") is True
    assert tree.node_count() == 3  # "a/b" still leads to "a/b/x"
    assert "a/b" not in tree
    assert tree.remove("a/b/x", "k1") is True
    assert tree.node_count() == 0 and len(tree) == 0 and tree.filter_count() == 0
    assert list(tree.filters()) == []
    assert tree.match("a/b/x") == {}


def test_tree_remove_keeps_other_keys(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("a/#", "k1", 1)
    tree.add("a/#", "k2", 2)
    assert tree.remove("a/#", "k1") is True
    assert tree.node_count() == 2 and tree.filter_count() == 1 and len(tree) == 1
    assert tree.match("a/b") == {"k2": [2]}
    # the '#' leaf goes with its last key; "a" stays while "a/x/y" needs it
    tree.add("a/x/y", "k3", 3)
    tree.remove("a/#", "k2")
    assert tree.node_count() == 3
    tree.remove("a/x/y", "k3")
    assert tree.node_count() == 0


def test_tree_readd_after_prune(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    for _ in range(3):
        assert tree.add("x/+/y/#", "k", 1) is True
        assert tree.match("x/1/y/2/3") == {"k": [1]}
        assert tree.remove("x/+/y/#", "k") is True
        assert tree.node_count() == 0
        assert tree.match("x/1/y/2/3") == {}


def test_tree_filters_listing(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    flts = ["a", "a/b", "a/+", "a/#", "#", "+", "+/+/c", "/", "$SYS/#", "a//b"]
    for i, f in enumerate(flts):
        tree.add(f, i, i)
        tree.add(f, "x", i)
    assert sorted(tree.filters()) == sorted(flts)
    assert len(tree) == 2 * len(flts) and tree.filter_count() == len(flts)
    for f in flts:
        assert f in tree
        assert tree.remove(f, "x") is True
    assert sorted(tree.filters()) == sorted(flts)
    for i, f in enumerate(flts):
        assert tree.remove(f, i) is True
    assert tree.node_count() == 0


def test_tree_deep_filters(m: ModuleType) -> None:
    # A deep filter (thousands of levels) must not overflow a recursion limit.
    tree = m.SubscriptionTree()
    depth = 20000
    flt = "/".join(["+"] * depth)
    tree.add(flt, "deep", 1)
    tree.add("/" * (depth - 1), "slashes", 2)
    topic = "/" * (depth - 1)
    assert m.validate_topic(topic)
    assert tree.match(topic) == {"deep": [1], "slashes": [2]}
    assert m.topic_matches(flt, topic) is True
    assert sorted(tree.filters()) == sorted([flt, topic])
    assert tree.remove(flt, "deep") and tree.remove("/" * (depth - 1), "slashes")
    assert tree.node_count() == 0


def test_tree_repr(m: ModuleType) -> None:
    tree = m.SubscriptionTree()
    tree.add("a", 1, 1)
    assert "1 subscriptions" in repr(tree)
