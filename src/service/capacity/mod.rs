//! What readers may spend, charged before they spend it: memory for decoded events
//! (`memory`, sized by `size`) and capacity shared fairly between tenants (`share`).

pub mod memory;
pub mod share;
pub mod size;
