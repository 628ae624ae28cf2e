//! Low-cardinality `http.route` inference from raw paths. Implementation pending.
