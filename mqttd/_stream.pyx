# cython: language_level=3
"""Plain TCP connections read and written through one epoll set of the node's own (Linux).

Why not the event loop's transport: an idle connection held through uvloop costs 1.15 KB in the
transport alone (its Python object, a libuv handle, a peer-address socket object), about half
of mqttd's whole figure per idle connection, and its accept path makes two more system calls
(``getsockname``, ``getpeername``) than ``accept4`` needs (benchmarks/ab_idle.py, issue 16).
A :class:`Stream` here is one fixed-size object: the socket's descriptor, the peer address
``accept4`` gave, and an output buffer that exists only while the kernel's is full.

The loop watches one descriptor, the epoll set's (``loop.add_reader``); :meth:`Poller.poll`
takes the ready sockets from it and calls each stream, which reads at most once per turn (as a
loop's transport does, so one fast publisher cannot hold the others). Everything else, timers,
TLS, WebSocket and Unix sockets, stays on the loop and its own transports; so does a node
without the compiled modules (``MQTTD_NO_EXTENSIONS=1``), which is this module's twin in
behaviour: :class:`Stream` keeps the asyncio transport contract mqttd.connection relies on.

Level-triggered: a stream is in the set only while it wants something (reading, or writing the
rest of a buffer), because epoll reports a hang-up even for a descriptor that asked for no
events, and a paused reader of a closed peer would be reported again every turn.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport (
    PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE,
)
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint32_t, uint64_t
from libc.errno cimport (
    errno, EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EPROTO,
)

import os

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    int accept4(int sockfd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    int getsockname(int sockfd, sockaddr *addr, socklen_t *addrlen)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        AF_INET
        AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        pass

    struct in6_addr:
        pass

    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    unsigned short ntohs(unsigned short)
    uint32_t ntohl(uint32_t)
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

#: bytes read from one socket at most per turn (uvloop's read buffer is as big)
DEF READ_SIZE = 256 * 1024
#: ready descriptors taken from the set per poll; more wait for the next turn
DEF BATCH = 256
#: connections accepted from one listener per turn at most, so a storm of them shares the
#: turn with the clients already connected
DEF ACCEPTS = 128
#: seconds a listener stops accepting after the process ran out of descriptors or memory
#: (asyncio's ACCEPT_RETRY_DELAY; mqttd.node's fd watch says it in the log)
ACCEPT_RETRY = 1.0
#: the output buffer above which the protocol is paused (pause_writing), and below which it is
#: resumed: asyncio's defaults
DEF HIGH_WATER = 64 * 1024


cdef object _address(sockaddr *addr):
    """The Python form of a socket address, as the socket module gives it."""
    cdef char text[64]
    cdef sockaddr_in *a4
    cdef sockaddr_in6 *a6
    if addr.sa_family == AF_INET:
        a4 = <sockaddr_in *>addr
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return ((<bytes>text).decode("ascii"), ntohs(a4.sin_port))
    if addr.sa_family == AF_INET6:
        a6 = <sockaddr_in6 *>addr
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return (
            (<bytes>text).decode("ascii"), ntohs(a6.sin6_port), ntohl(a6.sin6_flowinfo),
            a6.sin6_scope_id,
        )
    return None


cdef object _error(int code):
    """The OSError of an errno, as the socket module raises it (ConnectionResetError, ...)."""
    return OSError(code, os.strerror(code))


cdef class _Watched:
    """Something in the epoll set: a listening socket or a connection."""

    cdef Poller poller
    cdef int fd
    #: the events it is in the set for now; 0: not in the set
    cdef uint32_t mask

    cdef int ready(self, uint32_t events) except -1:
        return 0


cdef class Poller:
    """One epoll set and the loop reader that polls it (one per node)."""

    cdef int epfd
    cdef object loop
    cdef char *rbuf
    #: streams in the set or waiting for their connection_lost; the set is closed at 0
    cdef Py_ssize_t live
    cdef bint closed
    #: objects taken out of the set in this turn: kept alive until the turn's events are done,
    #: since an event for one may still be in the batch
    cdef list released
    cdef epoll_event events[BATCH]

    def __cinit__(self, loop):
        self.epfd = -1
        self.rbuf = NULL
        self.loop = loop
        self.released = []
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _error(errno)
        self.rbuf = <char *>malloc(READ_SIZE)
        if self.rbuf == NULL:
            close(self.epfd)
            self.epfd = -1
            raise MemoryError()
        loop.add_reader(self.epfd, self.poll)

    def __dealloc__(self):
        if self.rbuf != NULL:
            free(self.rbuf)
        if self.epfd >= 0:
            close(self.epfd)

    cdef int watch(self, _Watched w, uint32_t mask) except -1:
        """Put ``w`` in the set for ``mask``, or take it out (0)."""
        cdef epoll_event ev
        cdef int op
        if mask == w.mask:
            return 0
        memset(&ev, 0, sizeof(ev))
        ev.events = mask
        ev.data.ptr = <void *>w
        if w.mask == 0:
            op = EPOLL_CTL_ADD
        elif mask == 0:
            op = EPOLL_CTL_DEL
        else:
            op = EPOLL_CTL_MOD
        if self.epfd < 0 or epoll_ctl(self.epfd, op, w.fd, &ev) < 0:
            if mask != 0:
                raise _error(errno) if self.epfd >= 0 else OSError("the node's poller is closed")
            # (taking out what the kernel already dropped: a closed descriptor)
        if op == EPOLL_CTL_ADD:
            Py_INCREF(w)  # the set's reference: events carry only the pointer
        elif op == EPOLL_CTL_DEL:
            self.released.append(w)
            Py_DECREF(w)
        w.mask = mask
        return 0

    def poll(self):
        """The loop's reader: every ready stream and listener, once."""
        cdef int n, i
        cdef _Watched w
        n = epoll_wait(self.epfd, self.events, BATCH, 0)
        try:
            for i in range(n):
                w = <_Watched>self.events[i].data.ptr
                if w.mask:  # (else taken out earlier in this batch)
                    w.ready(self.events[i].events)
        finally:
            if self.released:
                self.released = []

    def close(self):
        """Stop polling; the set itself is closed once its last stream's connection_lost ran."""
        if self.closed:
            return
        self.closed = True
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
        self._close_if_done()

    cdef void _close_if_done(self):
        if self.closed and self.live == 0 and self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    def serve(self, sock, protocol_factory):
        """Accept connections on a listening socket (bound, listening, non-blocking): each gets
        ``protocol_factory()`` as its protocol and a :class:`Stream` as its transport."""
        cdef Acceptor acceptor = Acceptor.__new__(Acceptor)
        acceptor.poller = self
        acceptor.sock = sock
        acceptor.fd = sock.fileno()
        acceptor.factory = protocol_factory
        acceptor.resume()
        return acceptor


cdef class Acceptor(_Watched):
    """A listening socket in the set."""

    cdef object sock
    cdef object factory
    cdef object retry  # the TimerHandle of a pause after EMFILE
    cdef bint stopped

    def resume(self):
        self.retry = None
        if not self.stopped:
            self.poller.watch(self, EPOLLIN)

    def stop(self):
        """Accept no more connections (the socket stays open: its owner closes it)."""
        self.stopped = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.poller.watch(self, 0)

    cdef int ready(self, uint32_t events) except -1:
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        cdef int cfd, i, err
        cdef int one = 1
        cdef Poller poller = self.poller
        cdef Stream stream
        for i in range(ACCEPTS):
            addrlen = sizeof(addr)
            cfd = accept4(self.fd, <sockaddr *>&addr, &addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd < 0:
                err = errno
                if err == EAGAIN:
                    return 0
                if err == EINTR or err == ECONNABORTED or err == EPROTO:
                    continue  # that client gave up before it was accepted
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    # Out of descriptors: the clients wait in the backlog; not polled meanwhile,
                    # or the listener would be ready again at once, every turn
                    poller.watch(self, 0)
                    self.retry = poller.loop.call_later(ACCEPT_RETRY, self.resume)
                    return 0
                poller.loop.call_exception_handler({
                    "message": "accept4() failed on a listening socket",
                    "exception": _error(err),
                })
                return 0
            # MQTT's small packets must not wait for Nagle's delay (as uvloop's transports)
            setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            stream = Stream.__new__(Stream)
            stream.poller = poller
            stream.fd = cfd
            stream.high = HIGH_WATER
            stream.low = HIGH_WATER // 4
            stream.reading = True
            memcpy(&stream.addr, &addr, min(addrlen, sizeof(stream.addr)))
            poller.live += 1
            try:
                stream.protocol = self.factory()
                poller.watch(stream, EPOLLIN)
                stream.protocol.connection_made(stream)
            except Exception as exc:
                poller.loop.call_exception_handler({
                    "message": "a new connection's protocol failed",
                    "exception": exc,
                    "transport": stream,
                })
                stream.abort()
        return 0


cdef class Stream(_Watched):
    """One accepted TCP connection: the asyncio transport calls mqttd's protocols make
    (``write``, ``close``, ``abort``, ``pause_reading``, ``resume_reading``, ``is_closing``,
    ``get_extra_info``, the write-buffer calls), and their callbacks in asyncio's order."""

    #: mqttd.connection.Connection asks for the peer's address when it needs it, instead of
    #: keeping it: here it is 28 bytes, as a tuple 146 (issue 16)
    keeps_peername = True

    cdef object protocol
    #: the peer's address as accept4 gave it (an IPv4 one fits in the IPv6 struct)
    cdef sockaddr_in6 addr
    #: bytes the kernel did not take yet; None while there are none
    cdef bytearray wbuf
    # (ints and chars, not Py_ssize_t and bint: 16 bytes less per connection)
    cdef int high, low
    cdef char reading  # not paused by the protocol
    cdef char closing  # close(), abort() or an error: no more reads, no more writes taken
    cdef char lost  # connection_lost is called (or scheduled)
    cdef char eof  # the peer shut its side
    cdef char write_paused  # pause_writing() called, resume_writing() not yet

    cdef inline int _want(self) except -1:
        cdef uint32_t mask = 0
        if self.lost:
            return 0
        if self.reading and not self.closing and not self.eof:
            mask = EPOLLIN
        if self.wbuf is not None:
            mask |= EPOLLOUT
        return self.poller.watch(self, mask)

    cdef int ready(self, uint32_t events) except -1:
        # (an error or hang-up with only writes asked for is the send's to report: EPIPE)
        if self.mask & EPOLLOUT and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            self._send_rest()
        if not self.lost and self.mask & EPOLLIN and events & (EPOLLIN | EPOLLHUP | EPOLLERR):
            self._read()
        return 0

    cdef int _read(self) except -1:
        cdef ssize_t n = recv(self.fd, self.poller.rbuf, READ_SIZE, 0)
        cdef int err
        if n > 0:
            data = PyBytes_FromStringAndSize(self.poller.rbuf, n)
            try:
                self.protocol.data_received(data)
            except Exception as exc:
                self._fatal(exc, "Fatal error: protocol.data_received() call failed.")
        elif n == 0:
            self.eof = True
            self._want()
            try:
                keep = self.protocol.eof_received()
            except Exception as exc:
                self._fatal(exc, "Fatal error: protocol.eof_received() call failed.")
                return 0
            if not keep:
                self.close()
        else:
            err = errno
            if err != EAGAIN and err != EINTR:
                self._fatal(_error(err), None)
        return 0

    cdef int _send_rest(self) except -1:
        cdef bytearray buf = self.wbuf
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(buf)
        cdef ssize_t n = send(self.fd, PyByteArray_AS_STRING(buf), size, MSG_NOSIGNAL)
        cdef int err
        if n < 0:
            err = errno
            if err != EAGAIN and err != EINTR:
                self._fatal(_error(err), None)
            return 0
        if n == size:
            self.wbuf = None
            self._want()
            if self.closing:
                self._lose(None)
        else:
            del buf[:n]  # (from the front: CPython moves the start, no copy)
        self._resume_writing()
        return 0

    cdef inline Py_ssize_t _buffered(self):
        return PyByteArray_GET_SIZE(self.wbuf) if self.wbuf is not None else 0

    cdef inline void _resume_writing(self):
        if self.write_paused and self._buffered() <= self.low:
            self.write_paused = False
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._fatal(exc, "protocol.resume_writing() failed")

    cdef void _fatal(self, exc, message):
        if message is not None:
            self.poller.loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self,
                "protocol": self.protocol,
            })
        self.closing = True
        self.wbuf = None
        self._lose(exc)

    cdef void _lose(self, exc):
        """Out of the set now; connection_lost in the loop's next turn (as asyncio), and the
        descriptor closed after it."""
        if self.lost:
            return
        self.lost = True
        try:
            self.poller.watch(self, 0)
        except Exception:
            pass
        self.poller.loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc):
        cdef Poller poller = self.poller
        try:
            if self.protocol is not None:
                self.protocol.connection_lost(exc)
        finally:
            self.protocol = None  # (it holds this transport: no cycle left to collect)
            if self.fd >= 0:
                close(self.fd)
                self.fd = -1
            poller.live -= 1
            poller._close_if_done()

    # -- the asyncio transport -------------------------------------------------------------------
    def write(self, data):
        """Send ``data`` now as far as the kernel takes it; the rest is kept and sent when the
        socket is writable again (pause_writing above the high-water mark)."""
        cdef Py_buffer view
        cdef ssize_t n
        cdef int err
        if self.closing:
            return  # (what a closing transport is given has nobody to go to)
        if self.wbuf is not None:
            self.wbuf += data
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                if view.len == 0:
                    return
                n = send(self.fd, view.buf, view.len, MSG_NOSIGNAL)
                if n == view.len:
                    return
                if n < 0:
                    err = errno
                    if err != EAGAIN and err != EINTR:
                        self._fatal(_error(err), None)
                        return
                    n = 0
                self.wbuf = PyByteArray_FromStringAndSize(<char *>view.buf + n, view.len - n)
            finally:
                PyBuffer_Release(&view)
            self._want()
        if not self.write_paused and PyByteArray_GET_SIZE(self.wbuf) > self.high:
            self.write_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._fatal(exc, "protocol.pause_writing() failed")

    def writelines(self, list_of_data):
        for data in list_of_data:
            self.write(data)

    def close(self):
        """Read no more; connection_lost once what is buffered has been sent."""
        if self.closing:
            return
        self.closing = True
        self._want()
        if self.wbuf is None:
            self._lose(None)

    def abort(self):
        """Close now; what is buffered is dropped."""
        self.closing = True
        self.wbuf = None
        self._lose(None)

    def is_closing(self):
        return self.closing != 0

    def pause_reading(self):
        if self.reading:
            self.reading = False
            self._want()

    def resume_reading(self):
        if not self.reading:
            self.reading = True
            self._want()

    def is_reading(self):
        return self.reading != 0 and self.closing == 0

    def get_write_buffer_size(self):
        return self._buffered()

    def get_write_buffer_limits(self):
        return (self.low, self.high)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low

    def get_extra_info(self, name, default=None):
        cdef sockaddr_storage addr
        cdef socklen_t addrlen = sizeof(addr)
        if name == "peername":
            return _address(<sockaddr *>&self.addr)
        if name == "sockname" and self.fd >= 0:
            if getsockname(self.fd, <sockaddr *>&addr, &addrlen) == 0:
                return _address(<sockaddr *>&addr)
        return default

    @property
    def events(self):
        """The epoll events it is in the set for now (0: out of it): for tests."""
        return self.mask

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol):
        self.protocol = protocol

    def __repr__(self):
        return f"<mqttd Stream fd={self.fd} peer={self.get_extra_info('peername')!r}>"
