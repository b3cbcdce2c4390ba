// Just enough CommonJS for the browser to run JsSIP straight from node_modules.
//
// npm ships JsSIP 3.13 as CommonJS only (lib/*.js with require(), no browser bundle),
// and this example has no build step. So: fetch the module graph first (every
// require('literal') found in a source, resolved the way Node does for this tree:
// ".js", then "/index.js", package.json "browser" before "main"), then run each module
// in a function scope with its own `require`, `module` and `exports`, in the order the
// code requires them. SIP.js needs none of this: it ships ES modules.

const REQUIRE = /\brequire\(\s*(['"])([^'"]+)\1\s*\)/g;

export async function loadCommonJs(nodeModules, name) {
  const base = new URL(nodeModules, window.location.href);
  const texts = new Map(); // module URL -> source text
  const links = new Map(); // `${from URL} ${specifier}` -> module URL

  async function fetchText(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${response.status} for ${url}`);
    return response.text();
  }

  async function tryFile(url) {
    if (texts.has(url)) return url;
    const response = await fetch(url);
    if (!response.ok) return null;
    texts.set(url, await response.text());
    return url;
  }

  async function resolvePackage(spec) {
    const [pkg, ...rest] = spec.split("/");
    const dir = new URL(`${pkg}/`, base);
    if (rest.length) return resolvePath(new URL(rest.join("/"), dir));
    const manifest = JSON.parse(await fetchText(new URL("package.json", dir)));
    const entry = typeof manifest.browser === "string" ? manifest.browser : manifest.main;
    return resolvePath(new URL(entry || "index.js", dir));
  }

  async function resolvePath(url) {
    const href = url.href;
    if (href.endsWith("/")) return tryFile(`${href}index.js`);
    if (/\.(js|json)$/.test(href)) return tryFile(href);
    return (await tryFile(`${href}.js`)) || (await tryFile(`${href}/index.js`));
  }

  async function resolve(spec, from) {
    const key = `${from} ${spec}`;
    if (!links.has(key)) {
      const url = spec.startsWith(".") ? await resolvePath(new URL(spec, from)) : await resolvePackage(spec);
      if (!url) throw new Error(`cannot find module '${spec}' required from ${from}`);
      links.set(key, url);
    }
    return links.get(key);
  }

  // Fetch everything reachable, breadth first, before running anything.
  const root = await resolve(name, base.href);
  let wave = [root];
  const seen = new Set(wave);
  while (wave.length) {
    const next = [];
    await Promise.all(
      wave.map(async (url) => {
        if (url.endsWith(".json")) return;
        const specs = [...texts.get(url).matchAll(REQUIRE)].map((m) => m[2]);
        for (const spec of specs) {
          const child = await resolve(spec, url);
          if (!seen.has(child)) {
            seen.add(child);
            next.push(child);
          }
        }
      }),
    );
    wave = next;
  }

  const cache = new Map();
  function load(url) {
    if (cache.has(url)) return cache.get(url).exports;
    const module = { exports: {} };
    cache.set(url, module);
    const text = texts.get(url);
    if (url.endsWith(".json")) {
      module.exports = JSON.parse(text);
      return module.exports;
    }
    const require = (spec) => {
      const target = links.get(`${url} ${spec}`);
      if (!target) throw new Error(`module '${spec}' (required from ${url}) was not prefetched`);
      return load(target);
    };
    const run = new Function("exports", "require", "module", `${text}\n//# sourceURL=${url}`);
    run.call(module.exports, module.exports, require, module);
    return module.exports;
  }
  return load(root);
}
