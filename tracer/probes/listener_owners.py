"""Who owns each listening socket, by inode, cheaply enough to ask every
interval: a full /proc scan only when a listener we have not placed yet
appears; known owners are re-checked by reading one fd directory."""
from __future__ import annotations


from tracer.probes import procfs


class OwnerCache:
    def __init__(self):
        self._known: dict[int, tuple[int, str]] = {}

    def _still_holds(self, inode: int, pid: int) -> bool:
        held = procfs.socket_inodes(pid)
        return held is not None and inode in held

    def resolve(self, inodes: set[int]) -> dict[int, tuple[int, str]]:
        out, unknown = {}, set()
        for inode in inodes:
            owner = self._known.get(inode)
            if owner and self._still_holds(inode, owner[0]):
                # comm changes on exec: read it fresh
                out[inode] = (owner[0], procfs.comm(owner[0]) or owner[1])
            elif inode:
                unknown.add(inode)
        if unknown:
            found = procfs.owners(unknown)
            self._known.update(found)
            out.update(found)
        # forget listeners that are gone
        for inode in set(self._known) - inodes:
            del self._known[inode]
        return out
