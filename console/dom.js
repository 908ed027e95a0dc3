// Building the page from data without HTML strings: text is always text, never markup.

/** An element: `h('a', {href: '#/x', class: 'y'}, 'text', child)`. `on*` keys add listeners. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      element.setAttribute(name, '');
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

/** An SVG element (the DAG). */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A short, readable time. */
export function when(value) {
  if (!value) return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** The first 8 characters of an id, the whole id in its title. */
export function shortId(id) {
  return h('code', { title: id }, String(id).slice(0, 8));
}

/** A status as a coloured label (the word is always there: colour is never the only cue). */
export function badge(status) {
  return h('span', { class: `badge s-${String(status).replace(/[^a-z_]/g, '')}` }, String(status));
}

/** A table: `columns` are `[header, row => cell]`. */
export function table(caption, columns, rows, rowAttributes = () => ({})) {
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, columns.map(([name]) => h('th', { scope: 'col' }, name)))),
    h('tbody', {}, rows.map((row) => h('tr', rowAttributes(row), columns.map(([, cell]) => h('td', {}, cell(row)))))));
}

/** A labelled form field. */
export function field(label, input) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input);
}

/** Says `message` politely to screen readers and sighted users. */
export function toast(message) {
  const element = document.getElementById('toast');
  if (!element) return;
  element.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { element.textContent = ''; }, 5000);
}

/** A problem document (or any error) as one line. */
export function describe(error) {
  if (error && error.problem) {
    const { title, detail, errors } = error.problem;
    const fields = Array.isArray(errors) ? errors.map((e) => `${e.field}: ${e.message}`).join('; ') : '';
    return [title, detail, fields].filter(Boolean).join(' — ');
  }
  return error instanceof Error ? error.message : String(error);
}

/** An alert box for an error. */
export function alertBox(error) {
  return h('p', { class: 'alert', role: 'alert' }, describe(error));
}
