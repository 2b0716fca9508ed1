"""Access control lists in Mosquitto's syntax: who may publish to and read which topics.

The file (docs/security.md)::

    # rules before any "user" line: anonymous clients
    topic read public/#
    user alice
    topic readwrite alice/#
    topic deny alice/secret
    pattern write devices/%c/state     # every client; %c client id, %u user name

``topic [read|write|readwrite|deny] FILTER`` (no access word: readwrite) applies to the clients of
the ``user`` line above it; ``pattern`` lines apply to every client. A topic is readable (or
writable) when no applicable ``deny`` rule matches it and an applicable read (write) rule does:
no matching rule means denied.

Three checks use it: PUBLISH (write), SUBSCRIBE (a filter is granted when some topic it matches
could be read, and no deny rule covers all of them) and delivery, message by message, so that a
subscription to ``#`` only ever receives what the user may read (:meth:`Rights.may_read`).

A client id or user name containing ``+``, ``#`` or ``/`` would widen a pattern it is put into
(``devices/%c/#`` with the client id ``+``): such a pattern grants that client nothing, and a
deny pattern denies it everything the pattern's other levels leave open (fails closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqttd._speedups import match

READ = 1
WRITE = 2
READWRITE = READ | WRITE
DENY = 4
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READWRITE, "deny": DENY}
#: topics whose answer a client's :class:`Rights` remembers (then it starts over)
CACHE_TOPICS = 1024
_WIDENING = frozenset("+#/")


class AclFileError(ValueError):
    """An ACL file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Rule:
    access: int
    filter: str


@dataclass(slots=True)
class Acl:
    """A parsed ACL file."""

    #: rules for clients without a user name
    anonymous: list[Rule] = field(default_factory=list)
    #: user name -> that user's rules
    users: dict[str, list[Rule]] = field(default_factory=dict)
    #: rules for every client, with %c / %u still in them
    patterns: list[Rule] = field(default_factory=list)

    def rights(self, username: str | None, client_id: str) -> Rights:
        """What the client ``client_id`` authenticated as ``username`` may do."""
        rules = list(self.anonymous if username is None else self.users.get(username, ()))
        for rule in self.patterns:
            rules.extend(_substitute(rule, username, client_id))
        return Rights(rules)


def _substitute(rule: Rule, username: str | None, client_id: str) -> list[Rule]:
    text = rule.filter
    values = []
    if "%c" in text:
        values.append(client_id)
    if "%u" in text:
        if username is None:
            return []  # a %u pattern says nothing about anonymous clients (as Mosquitto)
        values.append(username)
    if any(ch in _WIDENING for value in values for ch in value):
        if rule.access & DENY:
            # Fail closed: deny what the pattern's other levels leave open
            levels = ["+" if ("%c" in lv or "%u" in lv) else lv for lv in text.split("/")]
            return [Rule(DENY, "/".join(levels))]
        return []
    text = text.replace("%c", client_id)
    if username is not None:
        text = text.replace("%u", username)
    if not match.validate_filter(text):
        return []
    return [Rule(rule.access, text)]


class Rights:
    """One client's rights: answers for topics and filters, the topics' answers cached."""

    __slots__ = ("deny", "read", "write", "_cache")

    def __init__(self, rules: list[Rule]) -> None:
        self.deny = [r.filter for r in rules if r.access & DENY]
        self.read = [r.filter for r in rules if r.access & READ and not r.access & DENY]
        self.write = [r.filter for r in rules if r.access & WRITE and not r.access & DENY]
        self._cache: dict[str, bool] = {}

    def may_write(self, topic: str) -> bool:
        """May this client publish to ``topic``?"""
        return not _any_matches(self.deny, topic) and _any_matches(self.write, topic)

    def may_read(self, topic: str) -> bool:
        """May this client receive a message published to ``topic``? (Called per delivery:
        the answer is remembered, for up to :data:`CACHE_TOPICS` topics.)"""
        cache = self._cache
        known = cache.get(topic)
        if known is not None:
            return known
        answer = not _any_matches(self.deny, topic) and _any_matches(self.read, topic)
        if len(cache) >= CACHE_TOPICS:
            cache.clear()
        cache[topic] = answer
        return answer

    def may_subscribe(self, filt: str) -> bool:
        """Could a subscription to ``filt`` receive anything? True when some read rule overlaps
        it and no deny rule covers it whole; what it receives is then checked per message."""
        if any(covers(d, filt) for d in self.deny):
            return False
        return any(overlap(r, filt) for r in self.read)


def _any_matches(filters: list[str], topic: str) -> bool:
    for f in filters:
        if match.topic_matches(f, topic):
            return True
    return False


def _levels(text: str) -> list[str]:
    return text.split("/")


def overlap(a: str, b: str) -> bool:
    """True when some topic name matches both filters ``a`` and ``b``."""
    la, lb = _levels(a), _levels(b)
    # A filter starting with a wildcard matches no topic starting with "$" [MQTT-4.7.2-1]
    if la[0] in ("+", "#") and lb[0].startswith("$"):
        return False
    if lb[0] in ("+", "#") and la[0].startswith("$"):
        return False
    i = 0
    while True:
        if i < len(la) and la[i] == "#":
            return True
        if i < len(lb) and lb[i] == "#":
            return True
        if i == len(la) or i == len(lb):
            return len(la) == len(lb)
        x, y = la[i], lb[i]
        if x != "+" and y != "+" and x != y:
            return False
        i += 1


def covers(a: str, b: str) -> bool:
    """True when every topic name that filter ``b`` matches is matched by filter ``a``."""
    la, lb = _levels(a), _levels(b)
    if la[0] in ("+", "#") and lb[0].startswith("$"):
        return False  # [MQTT-4.7.2-1]: "a" matches none of "b"'s topics
    for i, x in enumerate(la):
        if x == "#":
            return True
        if i == len(lb):
            return False
        y = lb[i]
        if y == "#":
            return False
        if x == "+":
            continue
        if y == "+" or x != y:
            return False
    return len(la) == len(lb)


def parse_lines(lines: list[str], path: str) -> Acl:
    """An :class:`Acl` from a file's lines; :class:`AclFileError` (file and line) otherwise."""
    acl = Acl()
    current = acl.anonymous
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "user":
            if not rest:
                raise AclFileError(f"{where}: 'user' needs a user name")
            current = acl.users.setdefault(rest, [])
            continue
        if word not in ("topic", "pattern"):
            raise AclFileError(
                f"{where}: unknown keyword {word!r} (expected user, topic or pattern)"
            )
        first, _, tail = rest.partition(" ")
        if first in _ACCESS:
            access, filt = _ACCESS[first], tail.strip()
        else:
            access, filt = READWRITE, rest
        if not filt:
            raise AclFileError(f"{where}: '{word}' needs a topic filter")
        # %c / %u stand for one level; check the filter with a placeholder in their place
        probe = filt.replace("%c", "x").replace("%u", "x") if word == "pattern" else filt
        if not match.validate_filter(probe):
            raise AclFileError(f"{where}: invalid topic filter {filt!r}")
        if word == "pattern":
            acl.patterns.append(Rule(access, filt))
        else:
            current.append(Rule(access, filt))
    return acl


def load(path: str) -> Acl:
    """Read an ACL file; :class:`AclFileError` naming the file (and line) if it cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise AclFileError(f"ACL file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise AclFileError(f"ACL file {path}: not UTF-8 text") from None
    return parse_lines(lines, path)


__all__ = ["Acl", "AclFileError", "Rights", "Rule", "covers", "load", "overlap", "parse_lines"]
