// The page's one DOM helper.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);
