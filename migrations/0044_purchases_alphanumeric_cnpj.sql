-- The alphanumeric CNPJ (IN RFB nº 2.229/2024, issued since July 2026) keeps its letters:
-- documents and stores are digits, or digits and upper-case letters (src/validate/document.ts).
ALTER TABLE purchases
  DROP CONSTRAINT purchases_document_check,
  DROP CONSTRAINT purchases_most_frequent_store_check,
  DROP CONSTRAINT purchases_last_store_check,
  ADD CONSTRAINT purchases_document_check CHECK (document ~ '^[0-9A-Z]+$'),
  ADD CONSTRAINT purchases_most_frequent_store_check CHECK (most_frequent_store ~ '^[0-9A-Z]+$'),
  ADD CONSTRAINT purchases_last_store_check CHECK (last_store ~ '^[0-9A-Z]+$');
