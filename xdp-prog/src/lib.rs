//! The eBPF side of `kangaroo-switch`: the XDP programs and the `#[repr(C)]` mirrors of their maps.
//!
//! The programs arrive with the switch daemon; this crate holds their place in the workspace so the
//! layout of `DESIGN.md` is stable from the start.
