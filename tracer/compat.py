"""What differs between the Python versions connscope runs on (3.9 to 3.13:
the system interpreters of RHEL 9 and Debian 11 up to Debian 13, the only
ones with the distribution's bcc bindings)."""
from __future__ import annotations

import sys

# dataclass(slots=True) is 3.10+: records decoded by the hundred thousand
# save memory and attribute time with it; on 3.9 they are plain dataclasses.
SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}
