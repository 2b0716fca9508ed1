"""A handler that cannot take the arguments the library passes is refused when it is registered
(TypeError naming the decorator and the parameters expected), not at the first CONNECT or
PUBLISH, where it used to fail every time with a traceback in the log.

Every form that can be called with those arguments registers: sync and async functions, extra
parameters with defaults, ``*args`` / ``**kwargs``, positional-only parameters, bound methods,
``functools.partial``, callable objects, and builtins whose signature cannot be read.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from mqttd import MQTTApp

#: decorator name -> (how to get the decorator from an app, the arguments the library passes)
DECORATORS: dict[str, tuple[Callable[[MQTTApp], Callable[[Any], Any]], tuple[str, ...]]] = {
    "subscribe": (lambda app: app.subscribe("t/1"), ("topic", "client")),
    "publish_handler": (lambda app: app.publish_handler("t/+"), ("message", "client")),
    "on_connect": (lambda app: app.on_connect, ("client",)),
    "on_disconnect": (lambda app: app.on_disconnect, ("client",)),
    "authenticate": (lambda app: app.authenticate, ("client", "username", "password")),
    "authorize_publish": (lambda app: app.authorize_publish, ("message", "client")),
    "authorize_subscribe": (lambda app: app.authorize_subscribe, ("topic", "qos", "client")),
}

NAMES = sorted(DECORATORS)


def register(name: str, func: Any) -> Any:
    get, _ = DECORATORS[name]
    return get(MQTTApp(port=0))(func)


def expected(name: str) -> str:
    return "(" + ", ".join(DECORATORS[name][1]) + ")"


def refused(name: str, func: Any, shown: str) -> None:
    """Registering ``func`` raises a TypeError that names the decorator, the handler as it is
    (``shown``) and what it must accept."""
    message = f"@app.{name} handler {shown} must accept {expected(name)}"
    with pytest.raises(TypeError, match=re.escape(message)):
        register(name, func)


def make(params: str, asynchronous: bool = False, name: str = "handler") -> Any:
    """A function ``name(params)``, built from source so that one test covers every decorator."""
    namespace: dict[str, Any] = {}
    exec(f"{'async ' if asynchronous else ''}def {name}({params}):\n    return None\n", namespace)
    return namespace[name]


# -- refused --------------------------------------------------------------------------------------
def test_the_issue_example_is_refused_at_registration() -> None:
    app = MQTTApp(port=0)

    def auth(client: Any) -> bool:
        return True

    with pytest.raises(TypeError) as info:
        app.authenticate(auth)
    assert str(info.value) == (
        "@app.authenticate handler auth(client) must accept (client, username, password)"
    )


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", NAMES)
def test_too_few_parameters_are_refused(name: str, asynchronous: bool) -> None:
    params = ", ".join(DECORATORS[name][1][:-1])
    refused(name, make(params, asynchronous), f"handler({params})")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", NAMES)
def test_too_many_required_parameters_are_refused(name: str, asynchronous: bool) -> None:
    params = ", ".join((*DECORATORS[name][1], "extra"))
    refused(name, make(params, asynchronous), f"handler({params})")


@pytest.mark.parametrize("name", NAMES)
def test_a_required_keyword_only_parameter_is_refused(name: str) -> None:
    # The library passes positional arguments only: a keyword-only one would never be given
    params = ", ".join((*DECORATORS[name][1], "*", "key"))
    refused(name, make(params), f"handler({params})")


@pytest.mark.parametrize("name", NAMES)
def test_a_callable_object_of_the_wrong_arity_is_refused(name: str) -> None:
    class Check:
        def __call__(self) -> None: ...

    refused(name, Check(), "Check()")


@pytest.mark.parametrize("name", NAMES)
def test_a_partial_that_binds_too_much_is_refused(name: str) -> None:
    params = DECORATORS[name][1]
    func = make(", ".join(params), name="full")
    bound = functools.partial(func, *params)  # nothing left for the library to pass
    refused(name, bound, "partial(full)()")


@pytest.mark.parametrize("name", NAMES)
def test_a_non_callable_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"@app.{name} handler must be callable")):
        register(name, "not a function")


def test_the_parameters_shown_are_the_handlers_own() -> None:
    """Defaults, *args and keyword-only markers are shown; annotations are left out."""

    def policy(topic: str, *, qos: int, client: Any = None) -> bool:
        return True

    refused("authorize_subscribe", policy, "policy(topic, *, qos, client=None)")


# -- accepted -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        "{}",  # exactly the arguments passed
        "{}, extra=None",  # more, with defaults
        "{}, *more, key=1, **options",
        "*args",
        "*args, **kwargs",
        "{}, /",  # positional-only: the library passes positional arguments
        "first, *rest",
    ],
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", NAMES)
def test_functions_that_accept_the_arguments_register(
    name: str, asynchronous: bool, params: str
) -> None:
    func = make(params.format(", ".join(DECORATORS[name][1])), asynchronous)
    assert register(name, func) is func  # returned unchanged


@pytest.mark.parametrize("name", NAMES)
def test_bound_methods_partials_and_callable_objects_register(name: str) -> None:
    class Handlers:
        def method(self, *args: Any) -> None: ...

        async def amethod(self, *args: Any) -> None: ...

        def __call__(self, *args: Any) -> None: ...

    class Exact:
        # the signature of a callable object is its __call__'s, without self
        def __call__(self, a: Any, b: Any = None, c: Any = None) -> None: ...

    h = Handlers()
    three = make("context, a, b=None, c=None")  # one more, bound by the partial
    for func in (h.method, h.amethod, h, Exact(), functools.partial(three, "ctx")):
        assert register(name, func) is func


def test_what_is_called_is_judged_not_what_a_decorator_wrapped() -> None:
    """A dependency-injecting decorator: its wrapper takes (*args) and adds an argument of its
    own, so the function it wraps (``__wrapped__``, which inspect follows by default) could not
    take the library's arguments alone, but the wrapper can."""

    def with_db(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            return func(*args, db={})

        return wrapper

    @with_db
    def on_connect(client: Any, *, db: dict[str, Any]) -> None: ...

    app = MQTTApp(port=0)
    assert app.on_connect(on_connect) is on_connect


def test_a_wrapper_written_in_c_is_judged_by_what_it_wraps() -> None:
    @functools.lru_cache
    def lookup(username: Any) -> bool:
        return True

    refused("authenticate", lookup, "lookup(username)")


def test_a_builtin_without_a_readable_signature_registers() -> None:
    """Some callables implemented in C expose no signature: nothing to check, so they are
    accepted (a wrong one still fails, and is logged, when it is called)."""
    try:
        inspect.signature(max)
    except ValueError:
        pass
    else:
        pytest.skip("max has a readable signature in this Python")
    app = MQTTApp(port=0)
    assert app.on_connect(max) is max


def test_the_factory_decorators_still_check_their_topic_first() -> None:
    app = MQTTApp(port=0)
    with pytest.raises(ValueError, match="not a valid MQTT topic filter"):
        app.subscribe("a/#/b")
    with pytest.raises(ValueError, match="not a valid MQTT topic filter"):
        app.publish_handler("a/#/b")


def test_publish_handler_without_a_pattern_checks_too() -> None:
    app = MQTTApp(port=0)
    with pytest.raises(TypeError, match=re.escape("@app.publish_handler handler")):
        app.publish_handler()(make("message"))
