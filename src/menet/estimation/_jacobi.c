/* Batched eigendecomposition of small symmetric matrices by cyclic Jacobi (menet).
 *
 * LAPACK's eigh handles one small matrix per call (torch loops over the batch), so at the
 * sizes of the nuclear-norm solver (8 to 64) it runs at a few GFLOP/s. Here LANES matrices are
 * stored interleaved ([row][col][lane]) and rotated together, so every inner loop is a vector
 * loop over the lanes. Jacobi also profits from a start near diagonal form (a few sweeps
 * instead of about seven), which the solver's tracked singular vectors give.
 *
 * Each lane rotates its (p, q) pair unless a_pq^2 <= tol^2 |a_pp a_qq| + floor, where
 * floor = (tol * 1e-3 * ||A||_F)^2 (relative accuracy for the large eigenvalues, an absolute
 * floor for the near-zero ones). A matrix has converged when its off-diagonal Frobenius norm is
 * at most tol * ||A||_F (each eigenvalue is then within that of a diagonal entry, by Weyl's
 * inequality) or a sweep rotated none of its pairs (then the norm is at most sqrt(n) tol
 * ||A||_F); from then on it is left unchanged, so its result does not depend on the other
 * matrices of its group. Only the lower triangle is read (as LAPACK) and updated, and each
 * matrix is scaled by a power of 2 first, so that no square under- or overflows. A matrix that
 * has not converged after max_sweeps, or that holds a NaN or Inf, is flagged, not returned as
 * if it had converged: the caller recomputes it.
 *
 * Needs GCC or Clang (vector extensions; the per-CPU clones are GCC's); elsewhere the build fails, and menet
 * installs without it and uses LAPACK (tests/test_small_eigh.py then fails on purpose).
 *
 * Built with -fno-math-errno (setup.py): sqrt then needs no errno path, so the rotation
 * parameters of the LANES matrices are computed in vector instructions (1.3-2x the speed of
 * the scalar code, the same results bit for bit).
 *
 * Python interface (pointers as integers, memory owned by the caller, C-contiguous):
 *   eigh(a, w, v, ok, batch, n, is_double, tol, max_sweeps) -> number of flagged matrices
 *   a: (batch, n, n) read only; w: (batch, n) eigenvalues ascending; v: (batch, n, n) whose
 *   columns are the eigenvectors; ok: (batch,) uint8, 1 where converged.
 *   rayleigh_ritz(g, b, w, v, ok, batch, m, k, is_double, tol, max_sweeps) -> number flagged
 *   g: (batch, m, m) symmetric (both triangles read), b: (batch, m, k) read only; w: (batch, k)
 *   Ritz values ascending and v: (batch, m, k) Ritz vectors of g on span(g b) (the power step,
 *   Householder QR, the k x k projection and the Jacobi above, in one pass); ok as for eigh.
 *   soft_threshold_filter(values, u, t, f, passed, batch, m, k, is_double) -> None
 *   values (batch, k), u (batch, m, k), t (batch,) read only; f (batch, m, m) = U diag(w) U^T
 *   with the soft-threshold weights w of sqrt(max(values, 0)) at t; passed (batch,) int64.
 *   threshold_step(gram, basis, sizes, t, f, next, ok, batch, m, is_double, tol, max_sweeps,
 *   margin) -> number flagged: the nuclear-norm solver's threshold step for every block size at
 *   once (see DEFINE_STEP). gram (batch, m, m) read only (both triangles where k < m, the lower
 *   one where k = m); basis (batch, m, m) read and written; sizes (batch,) int64 in [1, m] and
 *   t (batch,) read only; f (batch, m, m) filters, next (batch,) int64, ok (batch,) uint8 as for
 *   eigh. Where ok = 0 nothing is written to basis, f or next.
 * The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 16

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* One implementation per element type: T is float or double, SQRT and FABS its functions. */
#define DEFINE_JACOBI(T, SUFFIX, SQRT, FABS, VEC)                                                   \
    /* LANES values of T as one vector (GCC's vector extension): whole-vector loads and stores,     \
       so the compiler need not prove that the rotated rows do not overlap. */                      \
    typedef T VEC __attribute__((vector_size(LANES * sizeof(T))));                                  \
    /* (x, y) <- (c x - s y, s x + c y) in every lane. */                                           \
    static inline __attribute__((always_inline)) void rotate_##SUFFIX(T *x, T *y, const VEC *c, const VEC *s) { \
        VEC u, w;                                                                                   \
        __builtin_memcpy(&u, x, sizeof u);                                                          \
        __builtin_memcpy(&w, y, sizeof w);                                                          \
        VEC nu = *c * u - *s * w, nw = *s * u + *c * w;                                             \
        __builtin_memcpy(x, &nu, sizeof nu);                                                        \
        __builtin_memcpy(y, &nw, sizeof nw);                                                        \
    }                                                                                               \
    MULTIVERSION static void group_##SUFFIX(T *A, T *V, int n, int stride, int max_sweeps, T tol,   \
                                            int *nonfinite, int *unconverged) {                     \
        /* A, Vt: element (i, j) of lane l at [(i * stride + j) * LANES + l]; Vt = V^T. */                 \
        for (int i = 0; i < n; i++)                                                             \
            for (int j = 0; j < n; j++)                                                         \
                for (int l = 0; l < LANES; l++) V[(i * stride + j) * LANES + l] = (T)(i == j);  \
        T fro[LANES], floor_[LANES];                                                                \
        int live[LANES], done[LANES], rot[LANES];                                                   \
        for (int l = 0; l < LANES; l++) {                                                           \
            fro[l] = 0;                                                                             \
            done[l] = 0;                                                                            \
        }                                                                                           \
        for (int i = 0; i < n; i++)                                                             \
            for (int j = 0; j < n; j++) {                                                       \
                const T *a = &A[(i * stride + j) * LANES];                                      \
                for (int l = 0; l < LANES; l++) fro[l] += a[l] * a[l];                          \
            }                                                                                   \
        *nonfinite = 0;                                                                             \
        *unconverged = 0;                                                                           \
        for (int l = 0; l < LANES; l++) {                                                       \
            if (!isfinite(fro[l])) *nonfinite |= 1 << l;                                        \
            floor_[l] = tol * tol * (T)1e-6 * fro[l];                                               \
        }                                                                                       \
        for (int sweep = 0; sweep <= max_sweeps; sweep++) {                                         \
            /* Converged when every lane's off-diagonal norm is at most tol * ||A||_F (then each    \
               diagonal entry is within that of an eigenvalue, by Weyl's inequality). */            \
            T off[LANES];                                                                           \
            for (int l = 0; l < LANES; l++) off[l] = 0;                                             \
            for (int i = 1; i < n; i++) /* the strict lower triangle, the only one kept */          \
                for (int j = 0; j < i; j++) {                                                       \
                    const T *a = &A[(i * stride + j) * LANES];                                      \
                    for (int l = 0; l < LANES; l++) off[l] += a[l] * a[l];                          \
                }                                                                                   \
            for (int l = 0; l < LANES; l++) off[l] *= 2;                                            \
            /* A converged lane is frozen (its rotations become the identity, exactly), so each     \
               matrix's arithmetic does not depend on the other matrices of its group. */           \
            int pending = 0;                                                                        \
            for (int l = 0; l < LANES; l++) {                                                       \
                live[l] = !done[l] && !(off[l] <= tol * tol * fro[l]) && !((*nonfinite >> l) & 1);  \
                pending |= live[l];                                                                 \
            }                                                                                       \
            if (!pending) return;                                                                   \
            if (sweep == max_sweeps) { /* only the lanes still live are unconverged */              \
                for (int l = 0; l < LANES; l++) *unconverged |= live[l] << l;                       \
                break;                                                                              \
            }                                                                                       \
            for (int l = 0; l < LANES; l++) rot[l] = 0;                                             \
            for (int p = 0; p < n - 1; p++) {                                                   \
                for (int q = p + 1; q < n; q++) {                                               \
                    T *app = &A[(p * stride + p) * LANES], *aqq = &A[(q * stride + q) * LANES];   \
                    T *aqp = &A[(q * stride + p) * LANES];                                          \
                    T c[LANES], s[LANES], dp[LANES], dq[LANES], keep[LANES];                        \
                    int any = 0;                                                                    \
                    for (int l = 0; l < LANES; l++) {                                               \
                        T x = aqp[l];                                                               \
                        int go = live[l] && x * x > tol * tol * FABS(app[l] * aqq[l]) + floor_[l];  \
                        T theta = (aqq[l] - app[l]) / (go ? (T)2 * x : (T)1);                       \
                        T at = FABS(theta);                                                         \
                        T tt = at > (T)1e15 ? (T)0.5 / at : (T)1 / (at + SQRT(at * at + (T)1));     \
                        tt = theta < 0 ? -tt : tt;                                                  \
                        tt = go ? tt : (T)0;                                                        \
                        any |= go;                                                                  \
                        rot[l] |= go;                                                               \
                        T cc = (T)1 / SQRT((T)1 + tt * tt);                                         \
                        c[l] = cc;                                                                  \
                        s[l] = tt * cc;                                                             \
                        /* The 2 x 2 block's new diagonal, from the values before the step          \
                           (Rutishauser's formulas); its off-diagonal entry becomes 0. */           \
                        dp[l] = app[l] - tt * x;                                                    \
                        dq[l] = aqq[l] + tt * x;                                                    \
                        keep[l] = go ? (T)0 : x;                                                    \
                    }                                                                               \
                    if (!any) continue;                                                             \
                    /* A <- J^T A J, J the rotation in the (p, q) plane. Only the lower triangle is \
                       kept (entry (i, j) at (max(i, j), min(i, j))): outside the block, entry k of \
                       columns p and q is in a row (k < p), a row and a column (p < k < q) or       \
                       columns (k > q). */                                                          \
                    VEC cv, sv;                                                                     \
                    __builtin_memcpy(&cv, c, sizeof cv);                                            \
                    __builtin_memcpy(&sv, s, sizeof sv);                                            \
                    for (int k = 0; k < p; k++)                                                     \
                        rotate_##SUFFIX(&A[(p * stride + k) * LANES], &A[(q * stride + k) * LANES], &cv, &sv); \
                    for (int k = p + 1; k < q; k++)                                                 \
                        rotate_##SUFFIX(&A[(k * stride + p) * LANES], &A[(q * stride + k) * LANES], &cv, &sv); \
                    for (int k = q + 1; k < n; k++)                                                 \
                        rotate_##SUFFIX(&A[(k * stride + p) * LANES], &A[(k * stride + q) * LANES], &cv, &sv); \
                    for (int l = 0; l < LANES; l++) {                                               \
                        app[l] = dp[l];                                                             \
                        aqq[l] = dq[l];                                                             \
                        aqp[l] = keep[l];                                                           \
                    }                                                                               \
                    /* The rotated columns of V are rows of the stored transpose Vt (contiguous). */ \
                    T *vp = &V[p * stride * LANES], *vq = &V[q * stride * LANES];                   \
                    for (int k = 0; k < n; k++) rotate_##SUFFIX(&vp[k * LANES], &vq[k * LANES], &cv, &sv); \
                }                                                                                   \
            }                                                                                       \
            /* A lane whose pairs all passed the rotation test has converged too (its               \
               off-diagonal norm is then at most sqrt(n) tol ||A||_F); lane by lane. */             \
            for (int l = 0; l < LANES; l++) done[l] |= live[l] && !rot[l];                          \
        }                                                                                           \
    }                                                                                               \
                                                                                                \
    /* Lane l's diagonal of A (n x n, stride n + 1, as group_ leaves it) ascending, scaled back by  \
       2^exponent, into values (n); idx: the order that sorts it (insertion sort). */               \
    static void sorted_diagonal_##SUFFIX(const T *A, int n, int l, int exponent, int *idx, T *values) { \
        for (int i = 0; i < n; i++) {                                                               \
            idx[i] = i;                                                                             \
            values[i] = A[(i * (n + 1) + i) * LANES + l];                                           \
        }                                                                                           \
        for (int i = 1; i < n; i++) {                                                               \
            int k = idx[i];                                                                         \
            T x = values[i];                                                                        \
            int j = i - 1;                                                                          \
            while (j >= 0 && values[j] > x) {                                                       \
                values[j + 1] = values[j];                                                          \
                idx[j + 1] = idx[j];                                                                \
                j--;                                                                                \
            }                                                                                       \
            values[j + 1] = x;                                                                      \
            idx[j + 1] = k;                                                                         \
        }                                                                                           \
        for (int i = 0; i < n; i++) values[i] = (T)ldexp(values[i], exponent);                      \
    }                                                                                               \
    static int64_t eigh_##SUFFIX(const T *a, T *w, T *v, uint8_t *ok, int64_t batch, int n,     \
                                 T tol, int max_sweeps) {                                       \
        int stride = n + 1; /* padded rows: no power-of-two strides between columns */         \
        T *A = malloc(sizeof(T) * (size_t)n * stride * LANES);                                  \
        T *V = malloc(sizeof(T) * (size_t)n * stride * LANES);                                  \
        int *idx = malloc(sizeof(int) * (size_t)n);                                                 \
        int64_t flagged = 0;                                                                        \
        if (!A || !V || !idx) {                                                                     \
            free(A); free(V); free(idx);                                                            \
            return -1;                                                                          \
        }                                                                                       \
        for (int64_t b0 = 0; b0 < batch; b0 += LANES) {                                         \
            int used = (batch - b0) < LANES ? (int)(batch - b0) : LANES;                            \
            /* Each matrix is scaled by a power of 2 (exact) to a largest entry in [1, 2), so that  \
               the squares in the tests neither underflow nor overflow; its eigenvalues are         \
               scaled back. */                                                                      \
            int exponent[LANES];                                                                    \
            T scale[LANES];                                                                         \
            for (int l = 0; l < LANES; l++) {                                                       \
                T amax = 0; /* over the lower triangle, the only one read */                        \
                for (int i = 0; l < used && i < n; i++)                                             \
                    for (int j = 0; j <= i; j++) {                                                  \
                        T x = FABS(a[(b0 + l) * n * n + i * n + j]);                                \
                        amax = x > amax ? x : amax;                                                 \
                    }                                                                               \
                exponent[l] = (amax > 0 && isfinite(amax)) ? ilogb(amax) : 0;                       \
                scale[l] = (T)ldexp(1.0, -exponent[l]);                                             \
            }                                                                                       \
            for (int i = 0; i < n; i++)                                                             \
                for (int j = 0; j < n; j++)                                                         \
                    for (int l = 0; l < LANES; l++)                                                 \
                        A[(i * stride + j) * LANES + l] =                                           \
                            l < used ? a[(b0 + l) * n * n + (i > j ? i * n + j : j * n + i)] * scale[l] : (T)(i == j); \
            int nonfinite;                                                                      \
            int unconverged;                                                                     \
            group_##SUFFIX(A, V, n, stride, max_sweeps, tol, &nonfinite, &unconverged);             \
            for (int l = 0; l < used; l++) {                                                    \
                int good = !((unconverged >> l) & 1) && !((nonfinite >> l) & 1);                              \
                ok[b0 + l] = (uint8_t)good;                                                     \
                flagged += !good;                                                               \
                sorted_diagonal_##SUFFIX(A, n, l, exponent[l], idx, w + (b0 + l) * n);              \
                T *vo = v + (b0 + l) * n * n;                                                       \
                for (int r = 0; r < n; r++)                                                     \
                    for (int i = 0; i < n; i++) vo[r * n + i] = V[(idx[i] * stride + r) * LANES + l]; \
            }                                                                                   \
        }                                                                                       \
        free(A); free(V); free(idx);                                                                \
        return flagged;                                                                             \
    }

DEFINE_JACOBI(float, f32, sqrtf, fabsf, vec_f32)
DEFINE_JACOBI(double, f64, sqrt, fabs, vec_f64)

#define DEFINE_RAYLEIGH_RITZ(T, SUFFIX, SQRT, FABS, VEC)                                            \
    /* sum_r x[r] y[r] in every lane, x and y m lane vectors each (interleaved, contiguous). */     \
    static inline __attribute__((always_inline)) VEC lane_dot_##SUFFIX(const T *x, const T *y, int m) { \
        VEC acc = {0}, a, b;                                                                        \
        for (int r = 0; r < m; r++) {                                                               \
            __builtin_memcpy(&a, &x[r * LANES], sizeof a);                                          \
            __builtin_memcpy(&b, &y[r * LANES], sizeof b);                                          \
            acc += a * b;                                                                           \
        }                                                                                           \
        return acc;                                                                                 \
    }                                                                                               \
    /* out = G X for symmetric G (m x m, rows) and X (m x k, by columns); out by columns. */        \
    static inline __attribute__((always_inline)) void lane_gemm_##SUFFIX(const T *G, const T *X, T *out, int m, int k) { \
        for (int i = 0; i < m; i++)                                                                 \
            for (int c = 0; c < k; c++) {                                                           \
                VEC acc = lane_dot_##SUFFIX(&G[i * m * LANES], &X[c * m * LANES], m);               \
                __builtin_memcpy(&out[(c * m + i) * LANES], &acc, sizeof acc);                      \
            }                                                                                       \
    }                                                                                               \
    /* Rayleigh-Ritz of each symmetric G (m x m) on span(G B), B (m x k): Y = G B with its          \
       columns reversed (largest Ritz value first, see subspace_svt), Householder QR Y = Q R,       \
       H = Q^T G Q, H = W diag(theta) W^T by the Jacobi group routine; returns theta ascending      \
       and the Ritz vectors Q W. Each lane's G is scaled by a power of 2 first (its theta scaled    \
       back); H inherits G's scale (not rescaled: a block of Ritz values far below ||G|| gets       \
       absolute errors of order eps ||G||, as from LAPACK). ok = 0 where Jacobi did not             \
       converge or anything is not finite. */                                                       \
    MULTIVERSION static void rr_group_##SUFFIX(T *G, T *Y, T *H, T *W, T *tau, int m, int k,        \
                                              int max_sweeps, T tol, int *flags) {                  \
        /* G: [(i * m + j) * LANES + l]; Y, then Q, by columns: [(j * m + i) * LANES + l]; H, W: Jacobi's \
           layout with stride k + 1. Y = G B is filled by the caller. */                            \
        for (int j = 0; j < k; j++) { /* Householder QR of Y, reflectors below the diagonal */      \
            T alpha[LANES], norm[LANES];                                                            \
            for (int l = 0; l < LANES; l++) {                                                       \
                alpha[l] = Y[(j * m + j) * LANES + l];                                              \
                norm[l] = alpha[l] * alpha[l];                                                      \
            }                                                                                       \
            for (int i = j + 1; i < m; i++)                                                         \
                for (int l = 0; l < LANES; l++) norm[l] += Y[(j * m + i) * LANES + l] * Y[(j * m + i) * LANES + l]; \
            T scale[LANES];                                                                         \
            for (int l = 0; l < LANES; l++) {                                                       \
                T nrm = SQRT(norm[l]);                                                              \
                T beta = alpha[l] >= 0 ? -nrm : nrm;                                                \
                int zero = !(nrm > 0);                                                              \
                tau[j * LANES + l] = zero ? (T)0 : (beta - alpha[l]) / beta;                        \
                scale[l] = zero ? (T)0 : (T)1 / (alpha[l] - beta);                                  \
                Y[(j * m + j) * LANES + l] = zero ? alpha[l] : beta;                                \
            }                                                                                       \
            for (int i = j + 1; i < m; i++)                                                         \
                for (int l = 0; l < LANES; l++) Y[(j * m + i) * LANES + l] *= scale[l];             \
            for (int c = j + 1; c < k; c++) { /* apply I - tau v v^T (v_j = 1) to column c */       \
                T dot[LANES];                                                                       \
                for (int l = 0; l < LANES; l++) dot[l] = Y[(c * m + j) * LANES + l];                \
                for (int i = j + 1; i < m; i++)                                                     \
                    for (int l = 0; l < LANES; l++) dot[l] += Y[(j * m + i) * LANES + l] * Y[(c * m + i) * LANES + l]; \
                for (int l = 0; l < LANES; l++) {                                                   \
                    dot[l] *= tau[j * LANES + l];                                                   \
                    Y[(c * m + j) * LANES + l] -= dot[l];                                           \
                }                                                                                   \
                for (int i = j + 1; i < m; i++)                                                     \
                    for (int l = 0; l < LANES; l++) Y[(c * m + i) * LANES + l] -= dot[l] * Y[(j * m + i) * LANES + l]; \
            }                                                                                       \
        }                                                                                           \
        /* Q = H_0 ... H_(k-1) [I; 0], built in place of Y from the last reflector back. */         \
        for (int j = k - 1; j >= 0; j--) {                                                          \
            for (int c = j + 1; c < k; c++) { /* row j still holds R's entry: overwritten below */  \
                T dot[LANES];                                                                       \
                for (int l = 0; l < LANES; l++) dot[l] = 0;                                         \
                for (int i = j + 1; i < m; i++)                                                     \
                    for (int l = 0; l < LANES; l++) dot[l] += Y[(j * m + i) * LANES + l] * Y[(c * m + i) * LANES + l]; \
                for (int l = 0; l < LANES; l++) {                                                   \
                    dot[l] *= tau[j * LANES + l];                                                   \
                    Y[(c * m + j) * LANES + l] = -dot[l];                                           \
                }                                                                                   \
                for (int i = j + 1; i < m; i++)                                                     \
                    for (int l = 0; l < LANES; l++) Y[(c * m + i) * LANES + l] -= dot[l] * Y[(j * m + i) * LANES + l]; \
            }                                                                                       \
            for (int l = 0; l < LANES; l++) { /* column j: (I - tau v v^T) e_j */                   \
                T t = tau[j * LANES + l];                                                           \
                Y[(j * m + j) * LANES + l] = (T)1 - t;                                              \
            }                                                                                       \
            for (int i = j + 1; i < m; i++)                                                         \
                for (int l = 0; l < LANES; l++) Y[(j * m + i) * LANES + l] *= -tau[j * LANES + l];  \
        }                                                                                           \
        /* H = Q^T (G Q), lower triangle; W's first use is as the m x k product G Q. */             \
        T *GQ = W;                                                                                  \
        lane_gemm_##SUFFIX(G, Y, GQ, m, k);                                                         \
        for (int a = 0; a < k; a++)                                                                 \
            for (int c = 0; c <= a; c++) {                                                          \
                VEC acc = lane_dot_##SUFFIX(&Y[a * m * LANES], &GQ[c * m * LANES], m);              \
                __builtin_memcpy(&H[(a * (k + 1) + c) * LANES], &acc, sizeof acc);                  \
                __builtin_memcpy(&H[(c * (k + 1) + a) * LANES], &acc, sizeof acc);                  \
            }                                                                                       \
        int nonfinite, unconverged;                                                                 \
        group_##SUFFIX(H, W, k, k + 1, max_sweeps, tol, &nonfinite, &unconverged);                  \
        *flags = nonfinite | unconverged;                                                           \
    }                                                                                               \
                                                                                                    \
    static int64_t rr_##SUFFIX(const T *gram, const T *block, T *values, T *vectors, uint8_t *ok, int64_t batch, \
                               int m, int k, T tol, int max_sweeps) {                               \
        T *G = malloc(sizeof(T) * (size_t)m * m * LANES), *Y = malloc(sizeof(T) * (size_t)m * k * LANES); \
        T *Bt = malloc(sizeof(T) * (size_t)m * k * LANES); /* B interleaved, then the Ritz vectors */ \
        size_t wsize = (size_t)(m * k > k * (k + 1) ? m * k : k * (k + 1)) * LANES;                 \
        T *H = malloc(sizeof(T) * (size_t)k * (k + 1) * LANES), *W = malloc(sizeof(T) * wsize);     \
        T *tau = malloc(sizeof(T) * (size_t)k * LANES);                                             \
        int *idx = malloc(sizeof(int) * (size_t)k);                                                 \
        int64_t flagged = 0;                                                                        \
        if (!G || !Y || !Bt || !H || !W || !tau || !idx) {                                          \
            free(G); free(Y); free(Bt); free(H); free(W); free(tau); free(idx);                     \
            return -1;                                                                              \
        }                                                                                           \
        for (int64_t b0 = 0; b0 < batch; b0 += LANES) {                                             \
            int used = (batch - b0) < LANES ? (int)(batch - b0) : LANES;                            \
            int exponent[LANES];                                                                    \
            T scale[LANES];                                                                         \
            for (int l = 0; l < LANES; l++) { /* a power of 2 (exact): largest entry in [1, 2) */   \
                T amax = 0;                                                                         \
                for (int i = 0; l < used && i < m * m; i++) {                                       \
                    T x = FABS(gram[(b0 + l) * m * m + i]);                                         \
                    amax = x > amax ? x : amax;                                                     \
                }                                                                                   \
                exponent[l] = (amax > 0 && isfinite(amax)) ? ilogb(amax) : 0;                       \
                scale[l] = (T)ldexp(1.0, -exponent[l]);                                             \
            }                                                                                       \
            for (int i = 0; i < m * m; i++)                                                         \
                for (int l = 0; l < LANES; l++)                                                     \
                    G[i * LANES + l] = l < used ? gram[(b0 + l) * m * m + i] * scale[l] : (T)(i / m == i % m); \
            /* Y = G B with B's columns reversed; unused lanes: G = I and B = [I; 0]. */            \
            for (int r = 0; r < m; r++)                                                             \
                for (int c = 0; c < k; c++)                                                         \
                    for (int l = 0; l < LANES; l++)                                                 \
                        Bt[(c * m + r) * LANES + l] = l < used ? block[(b0 + l) * m * k + r * k + (k - 1 - c)] : (T)(r == c); \
            lane_gemm_##SUFFIX(G, Bt, Y, m, k);                                                     \
            int flags;                                                                              \
            rr_group_##SUFFIX(G, Y, H, W, tau, m, k, max_sweeps, tol, &flags);                      \
            /* Ritz vectors Q W in Jacobi's order, all lanes at once (into Bt), sorted below. */    \
            for (int e = 0; e < k; e++) {                                                           \
                T *out = &Bt[e * m * LANES];                                                        \
                for (int r = 0; r < m * LANES; r++) out[r] = 0;                                     \
                for (int c = 0; c < k; c++) {                                                       \
                    VEC wv, q, o;                                                                   \
                    __builtin_memcpy(&wv, &W[(e * (k + 1) + c) * LANES], sizeof wv);                \
                    for (int r = 0; r < m; r++) {                                                   \
                        __builtin_memcpy(&q, &Y[(c * m + r) * LANES], sizeof q);                    \
                        __builtin_memcpy(&o, &out[r * LANES], sizeof o);                            \
                        o += wv * q;                                                                \
                        __builtin_memcpy(&out[r * LANES], &o, sizeof o);                            \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
            for (int l = 0; l < used; l++) {                                                        \
                int good = !((flags >> l) & 1);                                                     \
                ok[b0 + l] = (uint8_t)good;                                                         \
                flagged += !good;                                                                   \
                sorted_diagonal_##SUFFIX(H, k, l, exponent[l], idx, values + (b0 + l) * k);         \
                T *vo = vectors + (b0 + l) * m * k;                                                 \
                for (int r = 0; r < m; r++) /* ascending */                                         \
                    for (int i = 0; i < k; i++) vo[r * k + i] = Bt[(idx[i] * m + r) * LANES + l];   \
            }                                                                                       \
        }                                                                                           \
        free(G); free(Y); free(Bt); free(H); free(W); free(tau); free(idx);                         \
        return flagged;                                                                             \
    }

DEFINE_RAYLEIGH_RITZ(float, f32, sqrtf, fabsf, vec_f32)
DEFINE_RAYLEIGH_RITZ(double, f64, sqrt, fabs, vec_f64)


/* One implementation per element type. For each matrix b: s_j = sqrt(max(lambda_j, 0)) of its k
   eigenvalues, w_j = (s_j - t_b) / s_j where s_j > t_b and 0 elsewhere (the soft-threshold
   weights of spectral.soft_threshold_weights), passed_b = #{j : w_j > 0}, and the m x m filter
   F = sum_j w_j u_j u_j^T over those j only (terms of zero weight are skipped, not added), with
   u_j the columns of U (m x k, row-major). Entry (i, c) adds (w_j u_ij) u_cj in ascending j,
   LANES entries of a row at a time in a vector register. */
#define DEFINE_FILTER(T, SUFFIX, SQRT, VEC)                                                         \
    MULTIVERSION static int filter_##SUFFIX(const T *values, const T *vectors, const T *threshold, \
                                            T *filt, int64_t *passed, int64_t batch, int m, int k) { \
        int mp = (m + LANES - 1) / LANES * LANES; /* rows of ut padded with zeros */                 \
        T *ut = calloc((size_t)mp * k, sizeof(T)), *wu = malloc(sizeof(T) * (size_t)m * k);         \
        if (!ut || !wu) {                                                                           \
            free(ut); free(wu);                                                                     \
            return -1;                                                                              \
        }                                                                                           \
        for (int64_t b = 0; b < batch; b++) {                                                       \
            const T *u = vectors + b * m * k;                                                       \
            T t = threshold[b];                                                                     \
            int r = 0;                                                                              \
            for (int j = 0; j < k; j++) {                                                           \
                T lam = values[b * k + j];                                                          \
                T sv = SQRT(lam > 0 ? lam : (T)0);                                                  \
                if (sv > t) { /* ut row r = u_j; wu column r = w_j u_j */                           \
                    T w = (sv - t) / sv;                                                            \
                    for (int c = 0; c < m; c++) {                                                   \
                        ut[r * mp + c] = u[c * k + j];                                              \
                        wu[c * k + r] = w * u[c * k + j];                                           \
                    }                                                                               \
                    r++;                                                                            \
                }                                                                                   \
            }                                                                                       \
            passed[b] = r;                                                                          \
            T *f = filt + b * m * m;                                                                \
            /* Four rows at a time: four independent sums hide the multiply-add latency. */         \
            for (int i0 = 0; i0 < m; i0 += 4)                                                       \
                for (int c0 = 0; c0 < m; c0 += LANES) {                                             \
                    /* Past the last row (rows < 4), w1..w3 repeat row i0: sums computed, not stored. */ \
                    int rows = m - i0 < 4 ? m - i0 : 4;                                             \
                    const T *w0 = &wu[i0 * k], *w1 = &wu[(i0 + (rows > 1)) * k];                    \
                    const T *w2 = &wu[(i0 + (rows > 2) * 2) * k], *w3 = &wu[(i0 + (rows > 3) * 3) * k]; \
                    VEC acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}, row;                        \
                    for (int q = 0; q < r; q++) {                                                   \
                        __builtin_memcpy(&row, &ut[q * mp + c0], sizeof row);                       \
                        acc0 += w0[q] * row;                                                        \
                        acc1 += w1[q] * row;                                                        \
                        acc2 += w2[q] * row;                                                        \
                        acc3 += w3[q] * row;                                                        \
                    }                                                                               \
                    int width = m - c0 < LANES ? m - c0 : LANES;                                    \
                    VEC *acc[4] = {&acc0, &acc1, &acc2, &acc3};                                     \
                    for (int d = 0; d < rows; d++) {                                                \
                        if (width == LANES) /* one vector store */                                  \
                            __builtin_memcpy(&f[(i0 + d) * m + c0], acc[d], sizeof(VEC));           \
                        else                                                                        \
                            for (int c = 0; c < width; c++) f[(i0 + d) * m + c0 + c] = (*acc[d])[c]; \
                    }                                                                               \
                }                                                                                   \
        }                                                                                           \
        free(ut); free(wu);                                                                         \
        return 0;                                                                                   \
    }

DEFINE_FILTER(float, f32, sqrtf, vec_f32)
DEFINE_FILTER(double, f64, sqrt, vec_f64)

/* One singular value threshold step of the nuclear-norm solver (subspace_svt.threshold_tracked)
   for a whole batch, in one call instead of 25-30 torch calls per block size. Matrix b has
   block size k = sizes[b] (k = m: the full decomposition): its Gram matrix (gram, m x m) is
   decomposed by rr (on span(G B), B the last k columns of basis_b, m x m row-major) or, for
   k = m, by eigh; the k vectors replace those columns of basis_b (all of it for k = m);
   filters_b = U diag(w) U^T as in filter; next_b = min(p + margin, m), p the number of passed
   values, or m where k < m and every value passed. Matrices of one k are processed in groups
   of LANES, in ascending b, gathered into scratch; a matrix's results depend on its own data
   only (the group routines leave converged lanes unchanged). ok_b = 0 where the decomposition
   failed (not finite or not converged): then basis_b, filters_b and next_b are not written. */
#define DEFINE_STEP(T, SUFFIX)                                                                      \
    static int64_t step_##SUFFIX(const T *gram, T *basis, const int64_t *sizes, const T *threshold, \
                                 T *filters, int64_t *next, uint8_t *ok, int64_t batch, int m,      \
                                 T tol, int max_sweeps, int margin) {                               \
        size_t mm = (size_t)m * m;                                                                  \
        int64_t *order = malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));                 \
        int64_t *start = calloc((size_t)m + 2, sizeof(int64_t));                                    \
        T *G = malloc(sizeof(T) * mm * LANES), *B = malloc(sizeof(T) * mm * LANES);                 \
        T *vals = malloc(sizeof(T) * (size_t)m * LANES), *vecs = malloc(sizeof(T) * mm * LANES);    \
        T *F = malloc(sizeof(T) * mm * LANES), t[LANES];                                            \
        int64_t passed[LANES];                                                                      \
        uint8_t good[LANES];                                                                        \
        int64_t flagged = 0;                                                                        \
        if (!order || !start || !G || !B || !vals || !vecs || !F) {                                 \
            flagged = -1;                                                                           \
            goto done;                                                                              \
        }                                                                                           \
        for (int64_t b = 0; b < batch; b++) start[sizes[b] + 1]++; /* counting sort by k */         \
        for (int k = 1; k <= m + 1; k++) start[k] += start[k - 1];                                  \
        for (int64_t b = 0; b < batch; b++) order[start[sizes[b]]++] = b;                           \
        for (int k = m; k >= 1; k--) start[k] = start[k - 1]; /* back to the first of each k */     \
        start[0] = 0;                                                                               \
        for (int k = 1; k <= m; k++) {                                                              \
            for (int64_t g0 = start[k]; g0 < start[k + 1]; g0 += LANES) {                           \
                int used = start[k + 1] - g0 < LANES ? (int)(start[k + 1] - g0) : LANES;            \
                for (int l = 0; l < used; l++) {                                                    \
                    int64_t b = order[g0 + l];                                                      \
                    __builtin_memcpy(&G[l * mm], &gram[b * mm], sizeof(T) * mm);                    \
                    for (int r = 0; k < m && r < m; r++)                                            \
                        __builtin_memcpy(&B[(l * m + r) * k], &basis[b * mm + r * m + (m - k)], sizeof(T) * (size_t)k); \
                    t[l] = threshold[b];                                                            \
                }                                                                                   \
                int64_t bad = k < m ? rr_##SUFFIX(G, B, vals, vecs, good, used, m, k, tol, max_sweeps) \
                                    : eigh_##SUFFIX(G, vals, vecs, good, used, m, tol, max_sweeps);  \
                if (bad < 0 || filter_##SUFFIX(vals, vecs, t, F, passed, used, m, k) < 0) {         \
                    flagged = -1;                                                                   \
                    goto done;                                                                      \
                }                                                                                   \
                for (int l = 0; l < used; l++) {                                                    \
                    int64_t b = order[g0 + l];                                                      \
                    ok[b] = good[l];                                                                \
                    if (!good[l]) {                                                                 \
                        flagged++;                                                                  \
                        continue;                                                                   \
                    }                                                                               \
                    for (int r = 0; r < m; r++)                                                     \
                        __builtin_memcpy(&basis[b * mm + r * m + (m - k)], &vecs[(l * m + r) * k], sizeof(T) * (size_t)k); \
                    __builtin_memcpy(&filters[b * mm], &F[l * mm], sizeof(T) * mm);                 \
                    int64_t p = k < m && passed[l] >= k ? m : passed[l];                            \
                    next[b] = p + margin < m ? p + margin : m;                                      \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    done:                                                                                           \
        free(order); free(start); free(G); free(B); free(vals); free(vecs); free(F);                \
        return flagged;                                                                             \
    }

DEFINE_STEP(float, f32)
DEFINE_STEP(double, f64)

static PyObject *py_eigh(PyObject *self, PyObject *args) {
    unsigned long long pa, pw, pv, pok;
    long long batch;
    int n, is_double, max_sweeps;
    double tol;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKLiidi", &pa, &pw, &pv, &pok, &batch, &n, &is_double, &tol, &max_sweeps))
        return NULL;
    if (batch < 0 || n < 1 || n > 1024 || max_sweeps < 1 || !(tol > 0)) {
        PyErr_SetString(PyExc_ValueError, "eigh: need batch >= 0, 1 <= n <= 1024, max_sweeps >= 1, tol > 0");
        return NULL;
    }
    int64_t flagged;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        flagged = eigh_f64((const double *)(uintptr_t)pa, (double *)(uintptr_t)pw, (double *)(uintptr_t)pv,
                           (uint8_t *)(uintptr_t)pok, batch, n, tol, max_sweeps);
    else
        flagged = eigh_f32((const float *)(uintptr_t)pa, (float *)(uintptr_t)pw, (float *)(uintptr_t)pv,
                           (uint8_t *)(uintptr_t)pok, batch, n, (float)tol, max_sweeps);
    Py_END_ALLOW_THREADS
    if (flagged < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(flagged);
}

static PyObject *py_rayleigh_ritz(PyObject *self, PyObject *args) {
    unsigned long long pg, pb, pw, pv, pok;
    long long batch;
    int m, k, is_double, max_sweeps;
    double tol;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKLiiidi", &pg, &pb, &pw, &pv, &pok, &batch, &m, &k, &is_double, &tol, &max_sweeps))
        return NULL;
    if (batch < 0 || k < 1 || k > m || m > 1024 || max_sweeps < 1 || !(tol > 0)) {
        PyErr_SetString(PyExc_ValueError, "rayleigh_ritz: need batch >= 0, 1 <= k <= m <= 1024, max_sweeps >= 1, tol > 0");
        return NULL;
    }
    int64_t flagged;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        flagged = rr_f64((const double *)(uintptr_t)pg, (const double *)(uintptr_t)pb, (double *)(uintptr_t)pw,
                         (double *)(uintptr_t)pv, (uint8_t *)(uintptr_t)pok, batch, m, k, tol, max_sweeps);
    else
        flagged = rr_f32((const float *)(uintptr_t)pg, (const float *)(uintptr_t)pb, (float *)(uintptr_t)pw,
                         (float *)(uintptr_t)pv, (uint8_t *)(uintptr_t)pok, batch, m, k, (float)tol, max_sweeps);
    Py_END_ALLOW_THREADS
    if (flagged < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(flagged);
}

static PyObject *py_soft_threshold_filter(PyObject *self, PyObject *args) {
    unsigned long long pv, pu, pt, pf, pp;
    long long batch;
    int m, k, is_double;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKLiii", &pv, &pu, &pt, &pf, &pp, &batch, &m, &k, &is_double))
        return NULL;
    if (batch < 0 || m < 1 || k < 1 || k > m || m > 1024) {
        PyErr_SetString(PyExc_ValueError, "soft_threshold_filter: need batch >= 0, 1 <= k <= m <= 1024");
        return NULL;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        status = filter_f64((const double *)(uintptr_t)pv, (const double *)(uintptr_t)pu, (const double *)(uintptr_t)pt,
                            (double *)(uintptr_t)pf, (int64_t *)(uintptr_t)pp, batch, m, k);
    else
        status = filter_f32((const float *)(uintptr_t)pv, (const float *)(uintptr_t)pu, (const float *)(uintptr_t)pt,
                            (float *)(uintptr_t)pf, (int64_t *)(uintptr_t)pp, batch, m, k);
    Py_END_ALLOW_THREADS
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_threshold_step(PyObject *self, PyObject *args) {
    unsigned long long pg, pb, ps, pt, pf, pn, pok;
    long long batch;
    int m, is_double, max_sweeps, margin;
    double tol;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKKKLiidii", &pg, &pb, &ps, &pt, &pf, &pn, &pok, &batch, &m, &is_double, &tol,
                          &max_sweeps, &margin))
        return NULL;
    if (batch < 0 || m < 1 || m > 1024 || max_sweeps < 1 || !(tol > 0) || margin < 0) {
        PyErr_SetString(PyExc_ValueError, "threshold_step: need batch >= 0, 1 <= m <= 1024, max_sweeps >= 1, tol > 0, margin >= 0");
        return NULL;
    }
    const int64_t *sizes = (const int64_t *)(uintptr_t)ps;
    for (long long b = 0; b < batch; b++)
        if (sizes[b] < 1 || sizes[b] > m) {
            PyErr_SetString(PyExc_ValueError, "threshold_step: every block size must be in [1, m]");
            return NULL;
        }
    int64_t flagged;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        flagged = step_f64((const double *)(uintptr_t)pg, (double *)(uintptr_t)pb, sizes, (const double *)(uintptr_t)pt,
                           (double *)(uintptr_t)pf, (int64_t *)(uintptr_t)pn, (uint8_t *)(uintptr_t)pok, batch, m, tol,
                           max_sweeps, margin);
    else
        flagged = step_f32((const float *)(uintptr_t)pg, (float *)(uintptr_t)pb, sizes, (const float *)(uintptr_t)pt,
                           (float *)(uintptr_t)pf, (int64_t *)(uintptr_t)pn, (uint8_t *)(uintptr_t)pok, batch, m,
                           (float)tol, max_sweeps, margin);
    Py_END_ALLOW_THREADS
    if (flagged < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(flagged);
}

static PyMethodDef methods[] = {
    {"eigh", py_eigh, METH_VARARGS, "Batched cyclic Jacobi eigh (see the module source)."},
    {"rayleigh_ritz", py_rayleigh_ritz, METH_VARARGS, "Batched Rayleigh-Ritz on span(G B) (see the module source)."},
    {"threshold_step", py_threshold_step, METH_VARARGS, "One batched threshold step of the nuclear-norm solver (see the module source)."},
    {"soft_threshold_filter", py_soft_threshold_filter, METH_VARARGS, "Batched soft-threshold filter U diag(w) U^T (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jacobi", NULL, -1, methods};

#ifndef MENET_JACOBI_SOURCE_HASH
#define MENET_JACOBI_SOURCE_HASH "unknown" /* built outside setup.py */
#endif

PyMODINIT_FUNC PyInit__jacobi(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "source_hash", MENET_JACOBI_SOURCE_HASH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
