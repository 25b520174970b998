-- purchases keyed by the document alone (issue 3): the surrogate `id` is dropped and the
-- document becomes the primary key. Nothing refers to a purchase by id, and each inserted
-- record paid for a second index (docs/purchases.md#relational-structure has the numbers).
ALTER TABLE purchases
  DROP CONSTRAINT purchases_pkey,
  DROP COLUMN id,
  DROP CONSTRAINT purchases_document_key,
  ADD CONSTRAINT purchases_pkey PRIMARY KEY (document);
