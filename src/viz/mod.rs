//! Pictures: image grids and charts.

pub mod grid;
