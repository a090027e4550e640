//! The client-facing proxy tier (metadata virtualization, produce
//! forwarding, fetch from shared storage). Not built yet: it is the subject
//! of the "Proxy tier" issue, and this crate deliberately holds no code until
//! then, so nothing here can be mistaken for a working proxy.
