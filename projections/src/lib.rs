//! What Chronicle serves to read: projectors and read models built from the global event
//! feed. Filled in by the read-side issues; the event feed types live in the runtime's store.
