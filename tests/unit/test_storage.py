"""MemoryStorage: the retained index against the matcher as oracle, sessions, ownership."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd._pure._match import topic_matches
from mqttd._pure._route import Message
from mqttd.storage import MemoryStorage, RetainedIndex

LEVELS = st.sampled_from(["a", "b", "$x", "", "c"])
# Valid topic names only: the empty topic is not one [MQTT-4.7.3-1]
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join).filter(bool)
FILTER_LEVELS = st.sampled_from(["a", "b", "$x", "", "+", "c"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVELS, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@settings(max_examples=300, deadline=None)
@given(topics=st.lists(TOPICS, max_size=12), gone=st.lists(TOPICS, max_size=6), filt=filters())
def test_index_matches_like_the_matcher(topics: list[str], gone: list[str], filt: str) -> None:
    index = RetainedIndex()
    kept: dict[str, object] = {}
    for t in topics:
        index.set(t, t)
        kept[t] = t
    for t in gone:
        assert index.delete(t) == (t in kept)
        kept.pop(t, None)
    assert index.count == len(kept)
    assert sorted(index.match(filt)) == sorted(t for t in kept if topic_matches(filt, t))


def test_deleting_frees_the_branch() -> None:
    index = RetainedIndex()
    index.set("a/b/c", 1)
    index.set("a", 2)
    assert index.delete("a/b/c")
    assert list(index.root.children) == ["a"] and not index.root.children["a"].children
    assert index.delete("a") and not index.root.children


def test_memory_storage_retain_clear_and_forget() -> None:
    s = MemoryStorage()
    m = Message("s/t", b"v", 1, True)
    s.retain(m)
    s.retain(Message("s/u", b"w", 0, True))
    assert s.retained_count() == 2
    assert s.retained_now("s/+") is not None and len(s.retained_now("s/+")) == 2
    assert asyncio.run(s.retained("s/t")) == [m]
    s.retain(Message("s/u", b"", 0, True))  # an empty payload clears [MQTT-3.3.1-6]
    assert s.retained_count() == 1
    s.forget_retained("s/t", Message("s/t", b"other", 0, True))  # not the one kept: stays
    assert s.retained_count() == 1
    s.forget_retained("s/t", m)
    assert s.retained_count() == 0


def test_memory_storage_ownership_and_sessions() -> None:
    s = MemoryStorage()
    a, b = object(), object()
    assert asyncio.run(s.claim("c1", a)) is None
    assert asyncio.run(s.claim("c1", b)) is a  # the caller closes the previous owner
    s.release("c1", a)  # late release of the old connection changes nothing
    assert asyncio.run(s.claim("c1", b)) is None

    class Sess:
        client_id = "c1"

    one, two = Sess(), Sess()
    s.put_session(one)
    assert asyncio.run(s.get_session("c1")) is one
    s.put_session(two)
    s.drop_session(one)  # replaced already: kept
    assert s.sessions() == {"c1": two}
    s.drop_session(two)
    assert s.sessions() == {}
