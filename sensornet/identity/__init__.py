"""
Who may write as which sensor and who may read: credentials kept in the
store (L{registry}), tokens (L{tokens}), a server's in-memory view of them
(L{cache}) and the C{sensornet} admin command (L{cli}). See
C{docs/security.md}.
"""

from .registry import Credential, Principal, Registry

__all__ = ["Credential", "Principal", "Registry"]
