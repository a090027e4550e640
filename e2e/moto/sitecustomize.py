"""Makes moto's S3 key writes atomic, as AWS S3's are.

moto checks a conditional PUT's precondition (If-None-Match: *, If-Match)
and then stores the object as two steps, with no lock between them, on a
threaded server: two concurrent creates of one key can both succeed, where
S3 lets exactly one win. Floe's storage contract depends on that exclusivity
(it is in the conformance suite), so the e2e harness starts moto_server with
this directory on PYTHONPATH and every PUT, POST and DELETE on a key runs
under one lock. Reads are not serialized.

If moto's request handlers are renamed, the server exits with status 70
rather than run without the guarantee.
"""

import os
import sys
import threading

try:
    from moto.s3.responses import S3Response
except ImportError:
    # Another Python program on this path: nothing to patch.
    S3Response = None

if S3Response is not None:
    _lock = threading.RLock()
    _names = ("_key_response_put", "_key_response_post", "_key_response_delete")
    if not all(hasattr(S3Response, n) for n in _names):
        sys.stderr.write(
            "floe e2e: moto's S3Response lacks %s; cannot make key writes atomic\n"
            % ", ".join(n for n in _names if not hasattr(S3Response, n))
        )
        sys.stderr.flush()
        os._exit(70)

    def _serialized(inner):
        def handler(self, *args, **kwargs):
            with _lock:
                return inner(self, *args, **kwargs)

        handler.__name__ = inner.__name__
        return handler

    for _n in _names:
        setattr(S3Response, _n, _serialized(getattr(S3Response, _n)))
