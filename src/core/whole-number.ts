/**
 * The number a text of plain decimal digits writes (at most 16 of them, so it is exact as a
 * JavaScript number), else undefined. `Number` alone would also take '' and ' ' (0), '0x10',
 * '1e3', ' 7' and '1.0': settings, query parameters and command options go through this.
 */
export function wholeNumber(text: string): number | undefined {
  return /^\d{1,16}$/.test(text) ? Number(text) : undefined;
}
