// Fused CPU training operators for seesawface (loaded with mx.library.load by symbols/fused.py).
//
// Each replaces a chain of MXNet operators whose backward passes make several trips over large feature maps:
//   seesaw_swish(x)         = x * sigmoid(x)                      (Activation + elemwise_mul + 3 backward ops)
//   seesaw_prelu(x, alpha)  = x > 0 ? x : alpha[c] * x            (LeakyReLU prelu: its CPU backward is ~50x
//                                                                    slower than a convolution's)
//   seesaw_scale(x, w)      = x[n, c, ...] * w[n, c]              (broadcast_mul of the SE gate)
//   seesaw_concat_shuffle(a, b, groups=2)                          (Concat + reshape/SwapAxis/reshape)
//                           = channel shuffle of concat(a, b) on axis 1: output channel i*g + j is input
//                             channel j*(C/g) + i
//   seesaw_split(x, point=k) = (x[:, :k], x[:, k:])                (two slice_axis, or split_v2: both slow)
//   seesaw_bn_swish(x, gamma, beta, running_mean, running_var, is_train)
//                           = swish(BatchNorm(x)) (BatchNorm + Activation + elemwise_mul; the BatchNorm output is
//                             not kept: the backward recomputes it from x and the saved mean and 1/std)
//   seesaw_spatial_mean(x)  = mean of x[n, c] over the spatial axes, (N, C, 1, ...)  (AdaptiveAvgPooling2D to 1x1
//                                                                    of the SE gate: a slow generic backward)
// Inputs are float32, laid out (N, C, ...) with C the second axis. Forward and backward are single passes,
// parallel over (n, c) planes with OpenMP; per-channel reductions are summed in double per plane.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;
typedef std::unordered_map<std::string, std::string> Attrs;

namespace {

inline float sigmoidf(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// (N, C, S) view of a tensor with at least two axes.
struct Planes {
  int64_t n, c, s;
};

Planes planes_of(const MXTensor& t) {
  Planes p{t.shape[0], t.shape.size() > 1 ? t.shape[1] : 1, 1};
  for (size_t i = 2; i < t.shape.size(); ++i) p.s *= t.shape[i];
  return p;
}

bool all_float32(const std::vector<MXTensor>& ts) {
  for (const auto& t : ts)
    if (t.dtype != kFloat32) return false;
  return true;
}

MXReturnValue fail(const char* op, const char* what) {
  MX_ERROR_MSG << op << ": " << what;
  return MX_FAIL;
}

// ------------------------------------------------------------------------------------------- shapes

MXReturnValue attrs_1in(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue attrs_2in(const Attrs&, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue type_float32(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (int t : *in)
    if (t != kFloat32) return fail("seesaw ops", "only float32 inputs are supported");
  (*out)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue shape_same_as_first(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                                  std::vector<std::vector<unsigned int>>* out) {
  (*out)[0] = (*in)[0];
  return MX_SUCCESS;
}

MXReturnValue shape_prelu(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  const auto& a = (*in)[1];
  if (x.size() < 2 || a.size() != 1 || a[0] != x[1])
    return fail("seesaw_prelu", "expects x (N, C, ...) and alpha (C,)");
  (*out)[0] = x;
  return MX_SUCCESS;
}

MXReturnValue shape_scale(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  const auto& w = (*in)[1];
  if (x.size() < 2 || w.size() < 2 || w[0] != x[0] || w[1] != x[1])
    return fail("seesaw_scale", "expects x (N, C, ...) and w (N, C, 1, ...)");
  for (size_t i = 2; i < w.size(); ++i)
    if (w[i] != 1) return fail("seesaw_scale", "w must be (N, C, 1, ...)");
  (*out)[0] = x;
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- swish

MXReturnValue swish_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_swish", "float32 only");
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t size = (*in)[0].size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < size; ++i) y[i] = x[i] * sigmoidf(x[i]);
  return MX_SUCCESS;
}

// inputs: dy, x, y   outputs: dx
MXReturnValue swish_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  float* dx = (*out)[0].data<float>();
  const int64_t size = (*in)[1].size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < size; ++i) {
    const float s = sigmoidf(x[i]);
    dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- prelu

MXReturnValue prelu_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_prelu", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const float* alpha = (*in)[1].data<float>();
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float a = alpha[plane % p.c];
    const float* xp = x + plane * p.s;
    float* yp = y + plane * p.s;
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) yp[i] = xp[i] > 0.0f ? xp[i] : a * xp[i];
  }
  return MX_SUCCESS;
}

// inputs: dy, x, alpha, y   outputs: dx, dalpha
MXReturnValue prelu_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  const float* alpha = (*in)[2].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dalpha = (*out)[1].data<float>();
  std::vector<double> partial(p.n * p.c);
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float a = alpha[plane % p.c];
    const float* xp = x + plane * p.s;
    const float* dyp = dy + plane * p.s;
    float* dxp = dx + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) {
      const bool pos = xp[i] > 0.0f;
      dxp[i] = pos ? dyp[i] : a * dyp[i];
      acc += pos ? 0.0f : dyp[i] * xp[i];
    }
    partial[plane] = acc;
  }
  for (int64_t c = 0; c < p.c; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < p.n; ++n) sum += partial[n * p.c + c];
    dalpha[c] = static_cast<float>(sum);
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- scale

MXReturnValue scale_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_scale", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const float* w = (*in)[1].data<float>();
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = w[plane];
    const float* xp = x + plane * p.s;
    float* yp = y + plane * p.s;
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) yp[i] = xp[i] * g;
  }
  return MX_SUCCESS;
}

// inputs: dy, x, w, y   outputs: dx, dw
MXReturnValue scale_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  const float* w = (*in)[2].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dw = (*out)[1].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = w[plane];
    const float* xp = x + plane * p.s;
    const float* dyp = dy + plane * p.s;
    float* dxp = dx + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) {
      dxp[i] = dyp[i] * g;
      acc += dyp[i] * xp[i];
    }
    dw[plane] = acc;
  }
  return MX_SUCCESS;
}


// ------------------------------------------------------------------------------------------- concat + shuffle

int groups_of(const Attrs& attrs) {
  auto it = attrs.find("groups");
  return it == attrs.end() ? 2 : std::stoi(it->second);
}

MXReturnValue attrs_shuffle(const Attrs& attrs, int* num_in, int* num_out) {
  if (groups_of(attrs) < 1) return fail("seesaw_concat_shuffle", "groups must be >= 1");
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue shape_shuffle(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                            std::vector<std::vector<unsigned int>>* out) {
  const auto& a = (*in)[0];
  const auto& b = (*in)[1];
  if (a.size() < 2 || a.size() != b.size() || a[0] != b[0])
    return fail("seesaw_concat_shuffle", "a and b must be (N, Ca, ...) and (N, Cb, ...)");
  for (size_t i = 2; i < a.size(); ++i)
    if (a[i] != b[i]) return fail("seesaw_concat_shuffle", "a and b differ beyond axis 1");
  if ((a[1] + b[1]) % groups_of(attrs)) return fail("seesaw_concat_shuffle", "channels not divisible by groups");
  (*out)[0] = a;
  (*out)[0][1] = a[1] + b[1];
  return MX_SUCCESS;
}

// Copies planes between concat(a, b) (source channel k) and the shuffled output (channel i*g + j).
template <bool kForward>
void shuffle_planes(float* a, float* b, float* out, int64_t n, int64_t ca, int64_t cb, int64_t s, int groups) {
  const int64_t c = ca + cb, per = c / groups;
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const int64_t img = plane / c, dst = plane % c;
    const int64_t src = (dst % groups) * per + dst / groups;
    float* side = src < ca ? a + (img * ca + src) * s : b + (img * cb + src - ca) * s;
    float* o = out + plane * s;
    if (kForward) {
      std::copy(side, side + s, o);
    } else {
      std::copy(o, o + s, side);
    }
  }
}

MXReturnValue shuffle_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                              const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_concat_shuffle", "float32 only");
  const Planes pa = planes_of((*in)[0]), pb = planes_of((*in)[1]);
  shuffle_planes<true>((*in)[0].data<float>(), (*in)[1].data<float>(), (*out)[0].data<float>(), pa.n, pa.c, pb.c,
                       pa.s, groups_of(attrs));
  return MX_SUCCESS;
}

// inputs: dout, a, b, out   outputs: da, db
MXReturnValue shuffle_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               const OpResource&) {
  const Planes pa = planes_of((*out)[0]), pb = planes_of((*out)[1]);
  shuffle_planes<false>((*out)[0].data<float>(), (*out)[1].data<float>(), (*in)[0].data<float>(), pa.n, pa.c, pb.c,
                        pa.s, groups_of(attrs));
  return MX_SUCCESS;
}


// ------------------------------------------------------------------------------------------- uneven split

int64_t point_of(const Attrs& attrs) {
  auto it = attrs.find("point");
  return it == attrs.end() ? -1 : std::stoll(it->second);
}

MXReturnValue attrs_split(const Attrs& attrs, int* num_in, int* num_out) {
  if (point_of(attrs) < 1) return fail("seesaw_split", "needs point >= 1");
  *num_in = 1;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue type_split(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if ((*in)[0] != kFloat32) return fail("seesaw_split", "only float32 inputs are supported");
  (*out)[0] = (*out)[1] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue shape_split(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  const int64_t k = point_of(attrs);
  if (x.size() < 2 || k >= static_cast<int64_t>(x[1])) return fail("seesaw_split", "point must be in [1, C)");
  (*out)[0] = x;
  (*out)[0][1] = static_cast<unsigned int>(k);
  (*out)[1] = x;
  (*out)[1][1] = x[1] - static_cast<unsigned int>(k);
  return MX_SUCCESS;
}

// Copies each image's first k channels to/from a and the rest to/from b (contiguous runs).
template <bool kForward>
void split_planes(float* x, float* a, float* b, int64_t n, int64_t c, int64_t k, int64_t s) {
#pragma omp parallel for schedule(static)
  for (int64_t img = 0; img < n; ++img) {
    float* xi = x + img * c * s;
    float* ai = a + img * k * s;
    float* bi = b + img * (c - k) * s;
    if (kForward) {
      std::copy(xi, xi + k * s, ai);
      std::copy(xi + k * s, xi + c * s, bi);
    } else {
      std::copy(ai, ai + k * s, xi);
      std::copy(bi, bi + (c - k) * s, xi + k * s);
    }
  }
}

MXReturnValue split_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_split", "float32 only");
  const Planes p = planes_of((*in)[0]);
  split_planes<true>((*in)[0].data<float>(), (*out)[0].data<float>(), (*out)[1].data<float>(), p.n, p.c,
                     point_of(attrs), p.s);
  return MX_SUCCESS;
}

// inputs: da, db, x, a, b   outputs: dx
MXReturnValue split_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*out)[0]);
  split_planes<false>((*out)[0].data<float>(), (*in)[0].data<float>(), (*in)[1].data<float>(), p.n, p.c,
                      point_of(attrs), p.s);
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- batchnorm + swish
//
// inputs:  x (N, C, ...), gamma (C,), beta (C,), running_mean (C,), running_var (C,) [both mutated], is_train (1,)
// outputs: y = swish(gamma * (x - mean) / sqrt(var + eps) + beta), mean (C,), invstd (C,) (saved for backward)
// attrs:   eps, momentum
//
// lib_api gives an operator no training flag (fcomp_t sees attributes, tensors and resources only), so the mode
// arrives as an input: Dropout(ones(1), p=0.5) is exactly 1 in inference and 0 or 2 in training
// (symbols.fused.is_train_flag).
// Training: batch statistics (biased variance, as MXNet's BatchNorm normalises with and stores), running
// statistics updated as MXNet's: running = running * momentum + batch * (1 - momentum). Inference: running
// statistics, nothing updated. Each channel's data (N * H * W floats, <= 800 KB at batch 64 and 56x56) is read
// once from memory and its later passes come from the core's cache.

double attr_double(const Attrs& attrs, const char* key, double fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stod(it->second);
}

MXReturnValue attrs_bn_swish(const Attrs&, int* num_in, int* num_out) {
  *num_in = 6;
  *num_out = 3;
  return MX_SUCCESS;
}

MXReturnValue mutate_bn_swish(const Attrs&, std::vector<int>* input_indices) {
  input_indices->push_back(3);
  input_indices->push_back(4);
  return MX_SUCCESS;
}

MXReturnValue type_bn_swish(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (int t : *in)
    if (t != kFloat32) return fail("seesaw_bn_swish", "only float32 inputs are supported");
  for (auto& t : *out) t = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue shape_bn_swish(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                             std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (x.size() < 2) return fail("seesaw_bn_swish", "x must be (N, C, ...)");
  for (int i = 1; i <= 4; ++i)
    if ((*in)[i].size() != 1 || (*in)[i][0] != x[1])
      return fail("seesaw_bn_swish", "gamma, beta, running_mean and running_var must be (C,)");
  if ((*in)[5].size() != 1 || (*in)[5][0] != 1) return fail("seesaw_bn_swish", "is_train must be (1,)");
  (*out)[0] = x;
  (*out)[1] = (*out)[2] = std::vector<unsigned int>{x[1]};
  return MX_SUCCESS;
}

// Sum of x over channel c, and sum of (x - shift)^2; per-plane float sums added in double.
void channel_moments(const float* x, const Planes& p, int64_t c, float shift, double* sum, double* sq) {
  double s1 = 0.0, s2 = 0.0;
  for (int64_t n = 0; n < p.n; ++n) {
    const float* xp = x + (n * p.c + c) * p.s;
    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
    for (int64_t i = 0; i < p.s; ++i) {
      const float d = xp[i] - shift;
      a1 += xp[i];
      a2 += d * d;
    }
    s1 += a1;
    s2 += a2;
  }
  *sum = s1;
  *sq = s2;
}

MXReturnValue bn_swish_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_bn_swish", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const float* gamma = (*in)[1].data<float>();
  const float* beta = (*in)[2].data<float>();
  float* running_mean = (*in)[3].data<float>();
  float* running_var = (*in)[4].data<float>();
  const bool train = (*in)[5].data<float>()[0] != 1.0f;
  float* y = (*out)[0].data<float>();
  float* mean_out = (*out)[1].data<float>();
  float* invstd_out = (*out)[2].data<float>();
  const float eps = static_cast<float>(attr_double(attrs, "eps", 1e-5));
  const float momentum = static_cast<float>(attr_double(attrs, "momentum", 0.9));
  const double count = static_cast<double>(p.n * p.s);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.c; ++c) {
    float mean, var;
    if (train) {
      double sum, sq;
      channel_moments(x, p, c, 0.0f, &sum, &sq);
      mean = static_cast<float>(sum / count);
      channel_moments(x, p, c, mean, &sum, &sq);  // two-pass variance: no cancellation (data now in cache)
      var = static_cast<float>(sq / count);
      running_mean[c] = running_mean[c] * momentum + mean * (1.0f - momentum);
      running_var[c] = running_var[c] * momentum + var * (1.0f - momentum);
    } else {
      mean = running_mean[c];
      var = running_var[c];
    }
    const float invstd = 1.0f / std::sqrt(var + eps);
    const float scale = gamma[c] * invstd, shift = beta[c] - mean * scale;
    for (int64_t n = 0; n < p.n; ++n) {
      const float* xp = x + (n * p.c + c) * p.s;
      float* yp = y + (n * p.c + c) * p.s;
#pragma omp simd
      for (int64_t i = 0; i < p.s; ++i) {
        const float h = xp[i] * scale + shift;
        yp[i] = h * sigmoidf(h);
      }
    }
    mean_out[c] = mean;
    invstd_out[c] = invstd;
  }
  return MX_SUCCESS;
}

// inputs: dy, dmean, dinvstd, x, gamma, beta, running_mean, running_var, is_train, y, mean, invstd
// outputs: dx, dgamma, dbeta, then (if MXNet asks for them) zero gradients of the statistics and the flag.
// The gradients of the mean and invstd outputs are ignored: they are saved state, not results.
// As MXNet's BatchNorm (native and oneDNN, 1.9.1), the backward always takes the statistics as functions of x,
// also after an inference-mode forward (autograd.record(train_mode=False)), where they were the running ones.
MXReturnValue bn_swish_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                const OpResource&) {
  const Planes p = planes_of((*in)[3]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[3].data<float>();
  const float* gamma = (*in)[4].data<float>();
  const float* beta = (*in)[5].data<float>();
  const float* mean = (*in)[10].data<float>();
  const float* invstd = (*in)[11].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dgamma = (*out)[1].data<float>();
  float* dbeta = (*out)[2].data<float>();
  const double count = static_cast<double>(p.n * p.s);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.c; ++c) {
    const float mu = mean[c], is = invstd[c];
    const float scale = gamma[c] * is, shift = beta[c] - mu * scale;
    // pass 1: dh = dL/d(BatchNorm output), its sum (dbeta) and its sum against x - mean
    double sum_dh = 0.0, sum_dh_xc = 0.0;
    for (int64_t n = 0; n < p.n; ++n) {
      const int64_t off = (n * p.c + c) * p.s;
      const float* xp = x + off;
      const float* dyp = dy + off;
      float* dhp = dx + off;  // dh is kept in dx (read back from cache by pass 2)
      float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
      for (int64_t i = 0; i < p.s; ++i) {
        const float h = xp[i] * scale + shift;
        const float s = sigmoidf(h);
        const float dh = dyp[i] * (s + h * s * (1.0f - s));
        dhp[i] = dh;
        a += dh;
        b += dh * (xp[i] - mu);
      }
      sum_dh += a;
      sum_dh_xc += b;
    }
    dbeta[c] = static_cast<float>(sum_dh);
    dgamma[c] = static_cast<float>(sum_dh_xc * is);
    // pass 2: dx = scale * (dh - mean(dh) - z * mean(dh * z))
    const float k1 = static_cast<float>(-scale * is * is * sum_dh_xc / count);
    const float k0 = static_cast<float>(-scale * sum_dh / count) - mu * k1;
    for (int64_t n = 0; n < p.n; ++n) {
      const int64_t off = (n * p.c + c) * p.s;
      const float* xp = x + off;
      float* dxp = dx + off;
#pragma omp simd
      for (int64_t i = 0; i < p.s; ++i) dxp[i] = dxp[i] * scale + k0 + xp[i] * k1;
    }
  }
  for (size_t i = 3; i < out->size(); ++i) {
    float* g = (*out)[i].data<float>();
    std::fill(g, g + (*out)[i].size(), 0.0f);
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- spatial mean

MXReturnValue shape_spatial_mean(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                                 std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (x.size() < 3) return fail("seesaw_spatial_mean", "x must be (N, C, H, ...)");
  (*out)[0] = x;
  for (size_t i = 2; i < x.size(); ++i) (*out)[0][i] = 1;
  return MX_SUCCESS;
}

MXReturnValue spatial_mean_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                   const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_spatial_mean", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float* xp = x + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) acc += xp[i];
    y[plane] = acc / static_cast<float>(p.s);
  }
  return MX_SUCCESS;
}

// inputs: dy, x, y   outputs: dx
MXReturnValue spatial_mean_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                    const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  float* dx = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = dy[plane] / static_cast<float>(p.s);
    float* dxp = dx + plane * p.s;
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) dxp[i] = g;
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(seesaw_swish)
    .setParseAttrs(attrs_1in)
    .setInferType(type_float32)
    .setInferShape(shape_same_as_first)
    .setForward(swish_forward, "cpu")
    .setBackward(swish_backward, "cpu");

REGISTER_OP(seesaw_prelu)
    .setParseAttrs(attrs_2in)
    .setInferType(type_float32)
    .setInferShape(shape_prelu)
    .setForward(prelu_forward, "cpu")
    .setBackward(prelu_backward, "cpu");

REGISTER_OP(seesaw_scale)
    .setParseAttrs(attrs_2in)
    .setInferType(type_float32)
    .setInferShape(shape_scale)
    .setForward(scale_forward, "cpu")
    .setBackward(scale_backward, "cpu");

REGISTER_OP(seesaw_concat_shuffle)
    .setParseAttrs(attrs_shuffle)
    .setInferType(type_float32)
    .setInferShape(shape_shuffle)
    .setForward(shuffle_forward, "cpu")
    .setBackward(shuffle_backward, "cpu");

REGISTER_OP(seesaw_split)
    .setParseAttrs(attrs_split)
    .setInferType(type_split)
    .setInferShape(shape_split)
    .setForward(split_forward, "cpu")
    .setBackward(split_backward, "cpu");

REGISTER_OP(seesaw_bn_swish)
    .setParseAttrs(attrs_bn_swish)
    .setMutateInputs(mutate_bn_swish)
    .setInferType(type_bn_swish)
    .setInferShape(shape_bn_swish)
    .setForward(bn_swish_forward, "cpu")
    .setBackward(bn_swish_backward, "cpu");

REGISTER_OP(seesaw_spatial_mean)
    .setParseAttrs(attrs_1in)
    .setInferType(type_float32)
    .setInferShape(shape_spatial_mean)
    .setForward(spatial_mean_forward, "cpu")
    .setBackward(spatial_mean_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return MX_SUCCESS;
  MX_ERROR_MSG << "seesaw ops need MXNet >= 1.9.0, found " << version;
  return MX_FAIL;
}
