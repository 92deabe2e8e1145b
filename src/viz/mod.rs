//! Pictures: image grids and charts.

pub mod grid;
pub mod panels;
pub mod plot;
