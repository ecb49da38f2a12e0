/* A 3x3 stride-1 convolution by Winograd's F(4x4, 3x3) in one pass over the image, for
 * protocaffe.deploy.native (compiled on the machine that runs it, loaded with ctypes).
 *
 * The torch version (protocaffe/deploy/winograd.py) runs each step over the whole image:
 * every transformed tile goes out to memory and comes back. Here each thread takes a block
 * of tiles at a time and keeps it in its cache through the three steps:
 *
 *   1. input transform: the block's 6x6 input tiles, 8 channels at a time, into
 *      V[36][tiles][C] (B^T d B, per channel);
 *   2. for each of the 36 positions, the product M = V U over the channels, with U = G w G^T
 *      prepared once per layer as [36][K/16][C][16] (16 output channels per panel);
 *   3. output transform: A^T m A for each tile, 8 output channels at a time, plus the bias,
 *      then ReLU where asked, written into the output.
 *
 * Activations are channels-last (N, H, W, C), float32; the channels of a group, in and out,
 * are multiples of 8 (the output's padded to 16 in U and M). The vectors are GCC's generic
 * vectors of 8 floats: the compiler maps them to one 256-bit register (AVX2, and AVX-512
 * machines too) or to pairs of 128-bit ones (SSE, NEON) for the machine it compiles on.
 */
#include <stdint.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8 __attribute__((vector_size(32)));

#define LOAD(p) (*(const v8u *)(p))
#define STORE(p, v) (*(v8u *)(p) = (v))

enum { ALPHA = 6, POINTS = 36, OUT = 4, ROWS = 6, PANEL = 16 };

/* B^T applied to d[0..5] (a column or a row of a tile):
 * the interpolation points 0, 1, -1, 2, -2 and infinity. */
static inline void input_1d(const v8 d[6], v8 o[6])
{
    o[0] = 4 * d[0] - 5 * d[2] + d[4];
    o[1] = d[3] + d[4] - 4 * (d[1] + d[2]);
    o[2] = d[4] - d[3] + 4 * (d[1] - d[2]);
    o[3] = d[4] - d[2] + 2 * (d[3] - d[1]);
    o[4] = d[4] - d[2] + 2 * (d[1] - d[3]);
    o[5] = 4 * d[1] - 5 * d[3] + d[5];
}

/* A^T applied to m[0..5]: four outputs. */
static inline void output_1d(const v8 m[6], v8 o[4])
{
    v8 s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    o[0] = m[0] + s12 + s34;
    o[1] = d12 + 2 * d34;
    o[2] = s12 + 4 * s34;
    o[3] = d12 + 8 * d34 + m[5];
}

/* Step 1 for tiles [first, first + count) of the image, into V (tiles rows of C); a pixel's
 * channels are ldx floats apart from the next pixel's. */
static void transform_input(const float *x, int H, int W, int C, int ldx, int ph, int pw, int th, int tw,
                            int64_t first, int count, int tiles, float *V)
{
    const v8 zero = {0};
    for (int t = 0; t < count; t++) {
        int64_t p = first + t;
        int n = (int)(p / ((int64_t)th * tw)), r = (int)(p % ((int64_t)th * tw));
        int y0 = (r / tw) * OUT - ph, x0 = (r % tw) * OUT - pw;
        int rows_in[ALPHA], cols_in[ALPHA];
        for (int i = 0; i < ALPHA; i++) {
            rows_in[i] = y0 + i >= 0 && y0 + i < H;
            cols_in[i] = x0 + i >= 0 && x0 + i < W;
        }
        const float *base = x + (((int64_t)n * H + y0) * W + x0) * ldx;
        for (int c = 0; c < C; c += 8) {
            v8 d[ALPHA][ALPHA], u[ALPHA][ALPHA], col[ALPHA], out[ALPHA];
            for (int i = 0; i < ALPHA; i++)
                for (int j = 0; j < ALPHA; j++)
                    d[i][j] = rows_in[i] && cols_in[j] ? LOAD(base + ((int64_t)i * W + j) * ldx + c) : zero;
            for (int j = 0; j < ALPHA; j++) {  /* columns: B^T d */
                for (int i = 0; i < ALPHA; i++)
                    col[i] = d[i][j];
                input_1d(col, out);
                for (int i = 0; i < ALPHA; i++)
                    u[i][j] = out[i];
            }
            for (int i = 0; i < ALPHA; i++) {  /* rows: (B^T d) B */
                input_1d(u[i], out);
                for (int j = 0; j < ALPHA; j++)
                    STORE(V + ((int64_t)(i * ALPHA + j) * tiles + t) * C + c, out[j]);
            }
        }
    }
    for (int q = 0; q < POINTS; q++)  /* a last block's spare rows: zeros, not what was there */
        for (int t = count; t < tiles; t++)
            for (int c = 0; c < C; c += 8)
                STORE(V + ((int64_t)q * tiles + t) * C + c, zero);
}

/* Step 2 at one position, columns [j0, j1) of M: M (tiles x Kp) = V (tiles x C) U (C x Kp),
 * U in panels of 16 columns ([Kp/16][C][16]); tiles a multiple of ROWS. */
static void product(const float *V, const float *U, float *M, int tiles, int C, int Kp, int j0, int j1)
{
    for (int j = j0; j < j1; j += PANEL) {
        const float *panel = U + (int64_t)j * C;
        for (int t = 0; t < tiles; t += ROWS) {
            v8 acc[ROWS][2];
            for (int r = 0; r < ROWS; r++)
                acc[r][0] = acc[r][1] = (v8){0};
            const float *v = V + (int64_t)t * C;
            for (int k = 0; k < C; k++) {
                v8 b0 = LOAD(panel + k * PANEL), b1 = LOAD(panel + k * PANEL + 8);
                for (int r = 0; r < ROWS; r++) {
                    float a = v[r * C + k];
                    acc[r][0] += a * b0;
                    acc[r][1] += a * b1;
                }
            }
            for (int r = 0; r < ROWS; r++) {
                STORE(M + (int64_t)(t + r) * Kp + j, acc[r][0]);
                STORE(M + (int64_t)(t + r) * Kp + j + 8, acc[r][1]);
            }
        }
    }
}

/* Step 3 for the block's tiles, output channels [k0, k1): A^T m A, the bias, ReLU, into
 * y (N, OH, OW, K), a pixel's channels ldy floats apart from the next pixel's. */
static void transform_output(const float *M, const float *bias, int relu, float *y, int OH, int OW,
                             int ldy, int Kp, int th, int tw, int64_t first, int count, int tiles,
                             int k0, int k1)
{
    for (int t = 0; t < count; t++) {
        int64_t p = first + t;
        int n = (int)(p / ((int64_t)th * tw)), r = (int)(p % ((int64_t)th * tw));
        int oy = (r / tw) * OUT, ox = (r % tw) * OUT;
        int rows = OH - oy < OUT ? OH - oy : OUT, cols = OW - ox < OUT ? OW - ox : OUT;
        float *base = y + (((int64_t)n * OH + oy) * OW + ox) * ldy;
        for (int k = k0; k < k1; k += 8) {
            v8 m[ALPHA][ALPHA], u[OUT][ALPHA], col[ALPHA], out[OUT];
            for (int i = 0; i < ALPHA; i++)
                for (int j = 0; j < ALPHA; j++)
                    m[i][j] = LOAD(M + ((int64_t)(i * ALPHA + j) * tiles + t) * Kp + k);
            for (int j = 0; j < ALPHA; j++) {  /* columns: A^T m */
                for (int i = 0; i < ALPHA; i++)
                    col[i] = m[i][j];
                output_1d(col, out);
                for (int i = 0; i < OUT; i++)
                    u[i][j] = out[i];
            }
            v8 b = {0};
            if (bias)
                b = LOAD(bias + k);
            for (int i = 0; i < rows; i++) {  /* rows: (A^T m) A */
                output_1d(u[i], out);
                for (int j = 0; j < cols; j++) {
                    v8 v = out[j] + b;
                    if (relu)  /* negatives to zero; NaN stays NaN, as in Caffe's ReLU */
                        v = (v8)((i8)v & ~(v < (v8){0}));
                    STORE(base + ((int64_t)i * OW + j) * ldy + k, v);
                }
            }
        }
    }
}

/* The convolution: x (N, H, W, groups C) -> y (N, OH, OW, groups K), channels [g C, g C + C) of
 * x giving channels [g K, g K + K) of y, OH = H + 2 ph - 2, OW = W + 2 pw - 2. U as above,
 * one after the other for the groups; bias (groups K) or NULL. The work is cut into groups times
 * blocks of `tiles` tiles (a multiple of ROWS) times `splits` ranges of output channels (whole
 * panels), shared among the threads in order: where the tiles are few (a small image) the
 * threads split the output channels, and each reads only its part of U. work: per thread,
 * 36 * tiles * (C + Kp) floats, whatever they hold (all are written before read). */
void winograd4(const float *x, int N, int H, int W, int C, const float *U, const float *bias,
               int relu, float *y, int K, int groups, int ph, int pw, int tiles, int splits, float *work,
               int threads)
{
    int OH = H + 2 * ph - 2, OW = W + 2 * pw - 2;
    int th = (OH + OUT - 1) / OUT, tw = (OW + OUT - 1) / OUT;
    int Kp = (K + PANEL - 1) / PANEL * PANEL, per_split = (Kp / PANEL + splits - 1) / splits * PANEL;
    int64_t total = (int64_t)N * th * tw, blocks = (total + tiles - 1) / tiles;
    int64_t per_thread = (int64_t)POINTS * tiles * (C + Kp);
#pragma omp parallel num_threads(threads)
    {
        extern int omp_get_thread_num(void);
        float *V = work + per_thread * omp_get_thread_num();
        float *M = V + (int64_t)POINTS * tiles * C;
        int64_t transformed = -1;  /* the group and block whose input V holds */
#pragma omp for schedule(static)
        for (int64_t unit = 0; unit < groups * blocks * splits; unit++) {
            int g = (int)(unit / (blocks * splits));
            int64_t gb = unit / splits, b = gb % blocks, first = b * tiles;
            int j0 = (int)(unit % splits) * per_split, j1 = j0 + per_split < Kp ? j0 + per_split : Kp;
            int count = total - first < tiles ? (int)(total - first) : tiles;
            const float *u = U + (int64_t)g * POINTS * C * Kp;
            if (j0 >= j1)
                continue;
            if (gb != transformed) {
                transform_input(x + (int64_t)g * C, H, W, C, groups * C, ph, pw, th, tw, first, count, tiles, V);
                transformed = gb;
            }
            for (int q = 0; q < POINTS; q++)
                product(V + (int64_t)q * tiles * C, u + (int64_t)q * C * Kp, M + (int64_t)q * tiles * Kp,
                        tiles, C, Kp, j0, j1);
            transform_output(M, bias ? bias + (int64_t)g * K : 0, relu, y + (int64_t)g * K, OH, OW, groups * K,
                             Kp, th, tw, first, count, tiles, j0, j1 < K ? j1 : K);
        }
    }
}
