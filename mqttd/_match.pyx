# cython: language_level=3, boundscheck=False, wraparound=False, annotation_typing=False
"""Topic validation and the subscription tree (compiled twin of ``mqttd._pure._match``).

Same names and same behaviour as the pure-Python reference, which documents the rules; the tests
run every case against both. What differs is only how: validation scans the string once in C,
and ``collect`` walks the tree with C-typed nodes and an explicit stack (no recursion, so a filter
thousands of levels deep cannot exhaust the C stack). The classes' fields are in ``_match.pxd``.

Rules enforced: topic names [MQTT-3.3.2-2][MQTT-4.7.3-1][MQTT-4.7.3-2][MQTT-4.7.3-3]
[MQTT-1.5.4-1]; filters [MQTT-4.7.1-2][MQTT-4.7.1-3]; shared subscriptions
[MQTT-4.8.2-1][MQTT-4.8.2-2]; matching [MQTT-4.7.1-2][MQTT-4.7.2-1].
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from mqttd.constants import MAX_STRING

__all__ = [
    "SubscriptionTree",
    "parse_shared",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

# a UTF-8 Encoded String carries a two-byte length [MQTT-1.5.4]
cdef Py_ssize_t _MAX_BYTES = MAX_STRING

cdef enum:
    _SHARE_LEN = 7  # len("$share/")
    _STACK0 = 64  # collect's stack frames before it moves to the heap

_SHARE_PREFIX = "$share/"


# -- validation ---------------------------------------------------------------------------------


cdef inline Py_ssize_t _utf8_len(Py_UCS4 ch) noexcept:
    """Bytes of ``ch`` in UTF-8; -1 for a surrogate, which UTF-8 cannot carry [MQTT-1.5.4-1]."""
    if ch < 0x80:
        return 1
    if ch < 0x800:
        return 2
    if ch < 0x10000:
        if 0xD800 <= ch <= 0xDFFF:
            return -1
        return 3
    return 4


cdef bint _topic_ok(str s) noexcept:
    """One pass: non-empty, no wildcard, no U+0000, well-formed, at most 65535 bytes."""
    cdef Py_ssize_t nbytes = 0, k
    cdef Py_UCS4 ch
    if len(s) == 0:  # [MQTT-4.7.3-1]
        return False
    for ch in s:
        if ch == u"+" or ch == u"#" or ch == 0:  # [MQTT-3.3.2-2] [MQTT-4.7.3-2]
            return False
        k = _utf8_len(ch)
        if k < 0:
            return False
        nbytes += k
    return nbytes <= _MAX_BYTES  # [MQTT-4.7.3-3]


cdef bint _plain_filter_ok(str s) noexcept:
    """A filter read literally (no ``$share/`` form), in one pass over the characters.

    A wildcard must open its level (the previous character is '/' or none); '+' must be followed
    by '/' or the end [MQTT-4.7.1-3]; '#' must be followed by nothing [MQTT-4.7.1-2].
    """
    cdef Py_ssize_t nbytes = 0, k
    cdef Py_UCS4 ch, prev = u"/"  # the start of the string opens a level like a '/'
    if len(s) == 0:  # [MQTT-4.7.3-1]
        return False
    for ch in s:
        if prev == u"#":
            return False
        if prev == u"+" and ch != u"/":
            return False
        if (ch == u"+" or ch == u"#") and prev != u"/":
            return False
        if ch == 0:  # [MQTT-4.7.3-2]
            return False
        k = _utf8_len(ch)
        if k < 0:
            return False
        nbytes += k
        prev = ch
    return nbytes <= _MAX_BYTES  # [MQTT-4.7.3-3]


cdef inline int _check_str(object s, str what) except -1:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be str, not {type(s).__name__}")
    return 0


cdef tuple _split_shared(str flt):
    """(share_name, inner filter) of a ``$share/`` filter, None if not one; ValueError if bad."""
    cdef Py_ssize_t slash
    cdef str rest, name, inner
    if not flt.startswith(_SHARE_PREFIX):
        return None
    rest = flt[_SHARE_LEN:]
    slash = rest.find(u"/")
    if slash < 0:
        # the share name MUST be followed by '/' and a topic filter [MQTT-4.8.2-2]
        raise ValueError(f"shared subscription {flt!r} has no topic filter after the share name")
    name = rest[:slash]
    inner = rest[slash + 1:]
    if len(name) == 0:  # [MQTT-4.8.2-1]
        raise ValueError(f"shared subscription {flt!r} has an empty share name")
    if u"+" in name or u"#" in name or u"\x00" in name:  # [MQTT-4.8.2-2] [MQTT-4.7.3-2]
        raise ValueError(f"share name {name!r} must not contain '+', '#' or U+0000")
    if not _plain_filter_ok(inner):  # [MQTT-4.8.2-2]
        raise ValueError(f"shared subscription {flt!r} has an invalid topic filter {inner!r}")
    return (name, inner)


cdef bint _filter_ok(str flt) except -1:
    if not _plain_filter_ok(flt):
        return False
    if flt.startswith(_SHARE_PREFIX):
        try:
            _split_shared(flt)
        except ValueError:
            return False
    return True


def validate_topic(topic: str) -> bool:
    """True when ``topic`` is a valid topic name for PUBLISH (no wildcards)."""
    _check_str(topic, "topic")
    return _topic_ok(<str>topic)


def validate_filter(filter: str) -> bool:
    """True when ``filter`` is a valid topic filter for SUBSCRIBE (``$share/`` form included)."""
    _check_str(filter, "filter")
    return _filter_ok(<str>filter)


def parse_shared(filter: str) -> tuple[str, str] | None:
    """Split ``$share/{ShareName}/{filter}`` into ``(share_name, filter)``.

    Returns None when ``filter`` does not start with ``$share/``; raises ValueError when it does
    but is malformed (empty share name, share name holding '+' or '#', missing, empty or invalid
    inner filter). The share name cannot hold '/': the first '/' after the prefix ends it.
    """
    _check_str(filter, "filter")
    return _split_shared(<str>filter)


def topic_matches(filter: str, topic: str) -> bool:
    """True when the topic name ``topic`` matches the topic filter ``filter``.

    A ``$share/{ShareName}/`` prefix on the filter is stripped first (the share name only groups
    subscribers). An invalid filter or topic name matches nothing.
    """
    cdef str flt, top
    cdef tuple shared
    cdef list flevels, tlevels
    cdef Py_ssize_t i, nf, nt
    cdef object fl
    _check_str(topic, "topic")
    _check_str(filter, "filter")
    top = <str>topic
    flt = <str>filter
    if not _topic_ok(top) or not _filter_ok(flt):
        return False
    shared = _split_shared(flt)
    if shared is not None:
        flt = <str>shared[1]
    # [MQTT-4.7.2-1] wildcards at the first level do not match topics starting with '$'
    if top[0] == u"$" and (flt[0] == u"+" or flt[0] == u"#"):
        return False
    flevels = flt.split(u"/")
    tlevels = top.split(u"/")
    nf = len(flevels)
    nt = len(tlevels)
    for i in range(nf):
        fl = flevels[i]
        if fl == u"#":
            return True  # the rest, the parent level included [MQTT-4.7.1-2]
        if i >= nt:
            return False
        if fl != u"+" and fl != tlevels[i]:
            return False
    return nf == nt


# -- the tree -----------------------------------------------------------------------------------


@cython.final
@cython.trashcan(True)  # freeing a deep branch must not recurse once per level in C
cdef class _Node:
    """One level: literal children by level string, and the '+' and '#' children apart, so a
    walk never hashes a wildcard. ``subs`` is None while nobody subscribes here."""


cdef struct _Frame:
    PyObject* node  # borrowed: the tree owns it and nothing runs that could change the tree
    Py_ssize_t i


@cython.final
cdef class SubscriptionTree:
    """Subscriptions by topic filter: ``{filter: {key: value}}`` arranged as a level tree.

    Filters given to ``add`` are plain filters (the broker strips ``$share/{name}/``). ``collect``
    returns the subscriber dicts of every filter matching a topic name; that is the per-message
    hot path. Empty branches are freed when their last subscription goes.
    """

    def __cinit__(self):
        self._root = _Node()
        self._count = 0
        self._filters = 0
        self._nodes = 0

    # -- changes ---------------------------------------------------------------------------

    def add(self, filter: str, key: object, value: object) -> bool:
        """Store ``value`` for ``key`` at ``filter``; True if ``key`` was new at that filter.

        Raises ValueError for an invalid filter: a stray '#' in the middle would leave an
        unreachable branch behind.
        """
        cdef _Node node, child
        cdef dict children, subs
        cdef object level
        cdef bint new
        _check_str(filter, "filter")
        if not _plain_filter_ok(<str>filter):
            raise ValueError(f"invalid topic filter {filter!r}")
        hash(key)  # an unhashable key fails here, before any node is made for it
        node = self._root
        for level in (<str>filter).split(u"/"):
            if level == u"+":
                child = node.plus
                if child is None:
                    child = node.plus = _Node()
                    self._nodes += 1
            elif level == u"#":
                child = node.hash
                if child is None:
                    child = node.hash = _Node()
                    self._nodes += 1
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                child = <_Node>children.get(level)
                if child is None:
                    child = _Node()
                    children[level] = child
                    self._nodes += 1
            node = child
        subs = node.subs
        if subs is None:
            subs = node.subs = {}
            self._filters += 1
        new = key not in subs
        subs[key] = value
        if new:
            self._count += 1
        return new

    def remove(self, filter: str, key: object) -> bool:
        """Remove ``key`` from ``filter``; True if it was there. Empty nodes are pruned."""
        cdef list path = []
        cdef _Node node, child, parent
        cdef dict children, subs
        cdef object level
        _check_str(filter, "filter")
        node = self._root
        for level in (<str>filter).split(u"/"):
            if level == u"+":
                child = node.plus
            elif level == u"#":
                child = node.hash
            else:
                children = node.children
                child = None if children is None else <_Node>children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.subs
        if subs is None or key not in subs:
            return False
        del subs[key]
        self._count -= 1
        if subs:
            return True
        node.subs = None
        self._filters -= 1
        # Free the branch bottom-up while nodes carry neither subscribers nor children.
        while path:
            if node.subs is not None or node.plus is not None or node.hash is not None:
                break
            if node.children:
                break
            parent, level = path.pop()
            if level == u"+":
                parent.plus = None
            elif level == u"#":
                parent.hash = None
            else:
                children = parent.children
                del children[level]
                if not children:
                    parent.children = None
            self._nodes -= 1
            node = parent
        return True

    # -- look-ups --------------------------------------------------------------------------

    cdef _Node _find(self, str flt):
        cdef _Node node = self._root
        cdef dict children
        cdef object level
        for level in flt.split(u"/"):
            if level == u"+":
                node = node.plus
            elif level == u"#":
                node = node.hash
            else:
                children = node.children
                node = None if children is None else <_Node>children.get(level)
            if node is None:
                return None
        return node

    def get(self, filter: str, key: object, default: object = None) -> object:
        """The value stored for ``key`` at ``filter``, or ``default``."""
        cdef _Node node
        _check_str(filter, "filter")
        node = self._find(<str>filter)
        if node is None or node.subs is None:
            return default
        return node.subs.get(key, default)

    def __contains__(self, filter: object) -> bool:
        """True when ``filter`` has at least one subscriber."""
        cdef _Node node
        if not isinstance(filter, str):
            return False
        node = self._find(<str>filter)
        return node is not None and node.subs is not None

    def collect(self, topic: str) -> list:
        """The subscriber dicts of every filter matching the topic name ``topic``.

        The dicts are the tree's own, not copies: read them, never change them, and do not keep
        them across a change of the tree. A key appears in several dicts when its subscriptions
        overlap. ``topic`` must be a valid topic name (see ``validate_topic``); order unspecified.
        """
        _check_str(topic, "topic")
        return self._collect(<str>topic)

    cdef list _collect(self, str topic):
        cdef list out = []
        cdef list levels = topic.split(u"/")
        cdef Py_ssize_t n = PyList_GET_SIZE(levels)
        # [MQTT-4.7.2-1]: the root's '+' and '#' children are skipped for '$' topics.
        cdef bint root_wild = not (len(topic) > 0 and topic[0] == u"$")
        cdef _Frame small[_STACK0]
        cdef _Frame* stack = small
        cdef _Frame* grown
        cdef Py_ssize_t cap = _STACK0, sp = 1, i
        cdef PyObject* node
        cdef PyObject* p
        cdef _Node nd
        cdef bint wild
        stack[0].node = <PyObject*>self._root
        stack[0].i = 0
        try:
            # Depth-first: follow the literal child in a loop, push the '+' branch for later.
            while sp:
                sp -= 1
                node = stack[sp].node
                i = stack[sp].i
                while True:
                    nd = <_Node>node
                    wild = i > 0 or root_wild
                    if nd.hash is not None and wild:
                        out.append(nd.hash.subs)  # '#' matches the rest, the parent included
                    if i == n:
                        if nd.subs is not None:
                            out.append(nd.subs)
                        break
                    if nd.plus is not None and wild:
                        if sp == cap:
                            if stack is small:
                                grown = <_Frame*>malloc(2 * cap * sizeof(_Frame))
                                if grown is not NULL:
                                    memcpy(grown, small, cap * sizeof(_Frame))
                            else:
                                grown = <_Frame*>realloc(stack, 2 * cap * sizeof(_Frame))
                            if grown is NULL:
                                raise MemoryError()
                            stack = grown
                            cap *= 2
                        stack[sp].node = <PyObject*>nd.plus
                        stack[sp].i = i + 1
                        sp += 1
                    if nd.children is None:
                        break
                    p = PyDict_GetItem(nd.children, <object>PyList_GET_ITEM(levels, i))
                    if p is NULL:
                        break
                    node = p
                    i += 1
        finally:
            if stack is not small:
                free(stack)
        return out

    def match(self, topic: str) -> dict:
        """``{key: [value, ...]}`` over every filter matching ``topic`` (a merged ``collect``)."""
        cdef dict merged = {}
        cdef dict subs
        cdef list values
        _check_str(topic, "topic")
        for subs in self._collect(<str>topic):
            for key, value in subs.items():
                values = merged.get(key)
                if values is None:
                    merged[key] = [value]
                else:
                    values.append(value)
        return merged

    # -- sizes and listing -----------------------------------------------------------------

    def __len__(self) -> int:
        """Number of (filter, key) subscriptions."""
        return self._count

    def filter_count(self) -> int:
        """Number of distinct filters with at least one subscriber."""
        return self._filters

    def node_count(self) -> int:
        """Number of nodes allocated, the root excluded (0 for an empty tree)."""
        return self._nodes

    def filters(self):
        """The filters with at least one subscriber (a snapshot; order unspecified)."""
        cdef list found = []
        cdef list path = []  # the levels leading to the node being visited
        cdef list stack = [(self._root, 0, u"")]
        cdef _Node node
        cdef Py_ssize_t depth
        while stack:
            node, depth, level = stack.pop()
            if depth:
                del path[depth - 1:]
                path.append(level)
            if node.subs is not None:
                found.append(u"/".join(path))
            depth += 1
            if node.hash is not None:
                stack.append((node.hash, depth, u"#"))
            if node.plus is not None:
                stack.append((node.plus, depth, u"+"))
            if node.children is not None:
                for level, child in node.children.items():
                    stack.append((child, depth, level))
        return iter(found)

    def __repr__(self) -> str:
        return f"<SubscriptionTree {self._count} subscriptions, {self._filters} filters>"
