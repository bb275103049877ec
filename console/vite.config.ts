// Builds the console into the Python package (delidev/console_dist), which the server serves
// at `/`. Relative asset URLs (`base: "./"`), so the same build also works from any static
// server on another origin (pointed at the API with `?server=`), as the browser tests do.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "../delidev/console_dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 400,
  },
});
