import type { CodegenConfig } from '@graphql-codegen/cli';

// The types of the operations the client sends, generated from the server's schema: a
// schema change that breaks them breaks the build.
const config: CodegenConfig = {
  schema: '../../schema.graphql',
  documents: 'src/operations.ts',
  generates: {
    'src/generated/graphql.ts': {
      plugins: ['typescript-operations'],
      config: {
        enumsAsTypes: true,
        useTypeImports: true,
        strictScalars: true,
        scalars: {
          DateTime: 'string',
          JSON: 'Record<string, unknown>',
          ID: 'string',
          _Any: 'unknown',
        },
      },
    },
  },
};

export default config;
