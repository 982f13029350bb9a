//! The pieces of the report document: headings, paragraphs, notes, lists, tables, figures and
//! code, rendered by [`super::render`].

pub(super) enum Span {
    T(String),
    C(String),
    B(String),
}

pub(super) enum Block {
    H(u8, String),
    P(Vec<Span>),
    Note(String),
    List(Vec<Vec<Span>>),
    Table(Table),
    Figure {
        caption: String,
        file: String,
        svg: String,
    },
    Code(String),
}

pub(super) struct Table {
    pub(super) class: &'static str,
    pub(super) head: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
    /// Right-aligned columns.
    pub(super) num: Vec<bool>,
}

pub(super) fn t(s: impl Into<String>) -> Span {
    Span::T(s.into())
}
pub(super) fn c(s: impl Into<String>) -> Span {
    Span::C(s.into())
}
pub(super) fn b(s: impl Into<String>) -> Span {
    Span::B(s.into())
}
pub(super) fn p(s: impl Into<String>) -> Block {
    Block::P(vec![t(s)])
}
