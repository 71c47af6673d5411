// MPEG audio frame splitting. The Web Audio fallback decodes the stream clip by clip and must know
// how many samples each piece holds to cut the decoder's warm-up away exactly.

const BITRATES_V1_L3 = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
const BITRATES_V2_L3 = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
const SAMPLE_RATES_V1 = [44100, 48000, 32000];

/** Parse a Layer III frame header at `offset`; null when the bytes there are not one. */
export function readFrameHeader(bytes, offset) {
  if (offset + 4 > bytes.length) return null;
  const [b0, b1, b2] = [bytes[offset], bytes[offset + 1], bytes[offset + 2]];
  if (b0 !== 0xff || (b1 & 0xe0) !== 0xe0) return null;
  const version = (b1 >> 3) & 3; // 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
  const layer = (b1 >> 1) & 3; // 1 = Layer III
  const bitrateIndex = b2 >> 4;
  const rateIndex = (b2 >> 2) & 3;
  if (version === 1 || layer !== 1 || bitrateIndex === 0 || bitrateIndex === 15 || rateIndex === 3) return null;
  const mpeg1 = version === 3;
  const kbps = (mpeg1 ? BITRATES_V1_L3 : BITRATES_V2_L3)[bitrateIndex];
  const sampleRate = SAMPLE_RATES_V1[rateIndex] / (mpeg1 ? 1 : version === 2 ? 2 : 4);
  const padding = (b2 >> 1) & 1;
  const length = Math.floor(((mpeg1 ? 144000 : 72000) * kbps) / sampleRate) + padding;
  return { length, sampleRate, samples: mpeg1 ? 1152 : 576 };
}

/**
 * Split bytes into whole frames. Bytes that are not a frame header are skipped (resync);
 * a frame cut off at the end is returned as `rest` to be prefixed to the next chunk.
 */
export function splitFrames(bytes) {
  const frames = [];
  let offset = 0;
  while (offset + 4 <= bytes.length) {
    const header = readFrameHeader(bytes, offset);
    if (!header) {
      offset += 1;
      continue;
    }
    if (offset + header.length > bytes.length) break;
    frames.push({ offset, ...header });
    offset += header.length;
  }
  return { frames, rest: bytes.subarray(offset) };
}

export function concatBytes(parts) {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}
