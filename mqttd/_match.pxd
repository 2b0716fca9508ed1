# cython: language_level=3
"""C-level declarations of ``mqttd._match``: the subscription tree and its nodes."""


cdef class _Node:
    cdef dict children  # None until the first literal child
    cdef _Node plus
    cdef _Node hash
    cdef dict subs


cdef class SubscriptionTree:
    cdef _Node _root
    cdef Py_ssize_t _count  # (filter, key) pairs
    cdef Py_ssize_t _filters  # nodes with a non-empty subs dict
    cdef Py_ssize_t _nodes  # nodes allocated, root excluded

    cdef _Node _find(self, str flt)
    cdef list _collect(self, str topic)
