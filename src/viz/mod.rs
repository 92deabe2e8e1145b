//! Pictures: image grids and charts.

pub mod grid;
pub mod plot;
