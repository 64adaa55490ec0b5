// ESLint flat config for the report viewer (report.js), run by .ci/run:
//   npx --yes eslint@9.39.5 -c src/m1/reporting/viewer/eslint.config.mjs src/m1/reporting/viewer
// It imports nothing, so it works from npx without a node_modules here: the rules are
// eslint:recommended (as @eslint/js 9 lists them) plus a few stricter ones, and a wall around
// the page's one rule: model output is untrusted, so nothing may parse a string as markup or code.
const recommended = [
  "constructor-super", "for-direction", "getter-return", "no-async-promise-executor", "no-case-declarations",
  "no-class-assign", "no-compare-neg-zero", "no-cond-assign", "no-const-assign", "no-constant-binary-expression",
  "no-constant-condition", "no-control-regex", "no-debugger", "no-delete-var", "no-dupe-args",
  "no-dupe-class-members", "no-dupe-else-if", "no-dupe-keys", "no-duplicate-case", "no-empty",
  "no-empty-character-class", "no-empty-pattern", "no-empty-static-block", "no-ex-assign", "no-extra-boolean-cast",
  "no-fallthrough", "no-func-assign", "no-global-assign", "no-import-assign", "no-invalid-regexp",
  "no-irregular-whitespace", "no-loss-of-precision", "no-misleading-character-class",
  "no-new-native-nonconstructor", "no-nonoctal-decimal-escape", "no-obj-calls", "no-octal", "no-prototype-builtins",
  "no-redeclare", "no-regex-spaces", "no-self-assign", "no-setter-return", "no-shadow-restricted-names",
  "no-sparse-arrays", "no-this-before-super", "no-undef", "no-unexpected-multiline", "no-unreachable",
  "no-unsafe-finally", "no-unsafe-negation", "no-unsafe-optional-chaining", "no-unused-labels",
  "no-unused-private-class-members", "no-unused-vars", "no-useless-backreference", "no-useless-catch",
  "no-useless-escape", "no-with", "require-yield", "use-isnan", "valid-typeof",
];

const markup = "model output is untrusted: build nodes with el()/text nodes, never parse strings as markup";

export default [
  {
    files: ["**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "script",
      // The browser globals the page uses; anything else is a typo (no-undef).
      globals: {
        window: "readonly", document: "readonly", Node: "readonly", Event: "readonly",
        requestAnimationFrame: "readonly", setTimeout: "readonly", clearTimeout: "readonly",
      },
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      ...Object.fromEntries(recommended.map((r) => [r, "error"])),
      "strict": ["error", "global"],
      "eqeqeq": ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
      "no-shadow": "error",
      "no-implicit-globals": "error",
      "no-use-before-define": ["error", { functions: false, classes: true, variables: true }],
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-script-url": "error",
      "no-restricted-properties": ["error",
        { property: "innerHTML", message: markup },
        { property: "outerHTML", message: markup },
        { property: "insertAdjacentHTML", message: markup },
        { property: "createContextualFragment", message: markup },
        { property: "parseFromString", message: markup },
        { object: "document", property: "write", message: markup },
        { object: "document", property: "writeln", message: markup },
      ],
    },
  },
];
